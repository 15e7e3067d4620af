"""Ray Tune comparison of callback settings: a grid of settings x seeds, one train run per trial.

`plateau compare SPEC` runs `study.run`: every combination of the grid's values, each over
several seeds, as Ray Tune trials; each trial is a full distributed train run. Which settings and
seeds a study has, and every trial's train spec, are `service.grid` and `service.seeding` (no Ray:
`plateau check` and the spec lint read them too). The parts here:

* `trials`     the Tune side: a trial runs `train.run`, the study's driver runs the trials;
* `aggregate`  one record per setting over its seeds;
* `tables`     comparison.csv, comparison.md, comparison.png and the lines printed.

Ray: an embedded Ray is started with enough logical CPUs for max_concurrent_trials trials of
(1 for the trial's own process + its workers' CPUs), more than a laptop has cores if need be;
with an address (or inside a Ray job) the study joins that cluster. `scaling.num_workers: 0`
(Ray Train's in-process mode) cannot run inside a Tune trial and is refused up front.
"""

from service.compare.study import run

__all__ = ["run"]
