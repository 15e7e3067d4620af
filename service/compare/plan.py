"""How a study runs its trials: how many workers each, and how many at once.

The worker count is a speed knob, not a setting under study: the global batch, the data order
and the dropout masks do not depend on it (`model.BatchSplit`, `worker.train_dataset`), so a run
on 1 worker and one on 3 differ only by the order in which gradients are summed (on the sample:
within 2e-5 for five epochs, then compounding, 4.7e-3 in val_loss at epoch 6). A study may
therefore choose it, as long as every trial of the study uses the same count.

`plan_workers` decides the count before Ray starts (it is part of every trial's spec);
`plan_processes` decides where a trial trains; `StudyPlan.concurrency` decides how many trials
run at once from the resources Ray reports. The count and the concurrency are fixed by the
compare spec (`workers_per_trial`, or `--workers`; `max_concurrent_trials`). Otherwise:

* CPUs: one worker per trial, as many trials at once as the CPUs hold: no trial's gradients
  cross a socket on the cores that compute. With `benchmarks/study.py` (the seed's experiment,
  2 arms x 2 seeds, full MNIST, 2 cores) this plan took 1.00-1.17x the by-hand time; studies
  of 2-worker trials one at a time took 4.44x, measured before a step ran one all-reduce
  (2-worker trials with today's step were not timed as a study).
* GPUs (the base sets `use_gpu`) and elastic bases: the base's workers, and as many trials at
  once as the GPUs (or CPUs) hold.

Where a trial trains: with one worker per trial on CPUs (one engine, no scheduler), in a warm
process: a Tune actor that runs the worker loop itself, as rank 0 of 1 (the 1-worker run's
maths, without Ray Train) and is kept for the next trial, with its engine imported, its data loaded and (keras_jax)
its epoch compiled. Every other plan keeps its placement: each trial starts its own Ray Train
workers, as `plateau train` does.

Example::

    workers, why = plan_workers(spec)                       # 1, "one worker per trial on CPUs ..."
    warm, where = plan_processes(spec, trials)               # True, "warm processes: ..."
    plan = StudyPlan(workers, why, warm, where).concurrency(spec, ray.cluster_resources(), trials=4)
    plan.line()     # "plan: 2 trial(s) at once, 1 worker(s) each (...); warm processes: ..."
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Optional

from service.spec import CompareSpec, TrainSpec

if TYPE_CHECKING:
    from service.grid import Trial

PLAN_FILE = "plan.json"


@dataclasses.dataclass(frozen=True)
class StudyPlan:
    workers: int                 # every trial's worker count
    workers_why: str
    warm: bool = False           # trials train in warm processes (`plan_processes`)
    warm_why: str = ""
    concurrent: Optional[int] = None   # trials at once, once Ray's resources are known
    concurrent_why: str = ""

    def concurrency(self, spec: CompareSpec, resources: dict[str, float], trials: int,
                    trial_cpus: float = 0) -> "StudyPlan":
        """This plan with the trials at once: fixed by the spec, else as many as `resources`
        (Ray's cluster resources) hold, between 1 and `trials`. `trial_cpus`: what a trial's own
        process reserves besides its workers (`trials.trial_resources`); a warm trial's process
        is its worker."""
        if spec.max_concurrent_trials != "auto":
            return dataclasses.replace(self, concurrent=spec.max_concurrent_trials,
                                       concurrent_why="max_concurrent_trials in the study")
        base = spec.base
        if base.scaling.use_gpu:
            key, per_trial = "GPU", self.workers * base.scaling.gpus_per_worker
        else:
            own = 0 if self.warm else trial_cpus
            key, per_trial = "CPU", max(self.workers, 1) * base.scaling.cpus_per_worker + own
        have = float(resources.get(key, 0.0))
        fits = int(have / per_trial + 1e-9) if per_trial > 0 else trials
        concurrent = max(1, min(fits, trials))
        unit = "GPUs" if key == "GPU" else "CPUs"
        return dataclasses.replace(self, concurrent=concurrent,
                                   concurrent_why=f"Ray reports {have:g} {unit}, a trial needs {per_trial:g}")

    def line(self) -> str:
        at_once = f"{self.concurrent} trial(s) at once" if self.concurrent else "trials"
        return (f"plan: {at_once}, {self.workers} worker(s) each ({self.workers_why}"
                f"{'; ' + self.concurrent_why if self.concurrent_why else ''})"
                f"{'; ' + self.warm_why if self.warm_why else ''}")

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def plan_workers(spec: CompareSpec) -> tuple[int, str]:
    """Every trial's worker count, and why."""
    base: TrainSpec = spec.base
    if spec.workers_per_trial != "auto":
        return spec.workers_per_trial, "workers_per_trial in the study"
    if base.scaling.use_gpu:
        return base.max_workers, "the base's workers: trials on GPUs"
    if base.scaling.elastic:
        return base.max_workers, "the base's workers: an elastic base"
    return 1, "one worker per trial on CPUs: no gradient exchange between processes"


def with_workers(spec: CompareSpec, workers: int) -> CompareSpec:
    """`spec` with every trial on `workers` workers (an elastic base keeps its range)."""
    if spec.base.scaling.elastic and workers == spec.base.max_workers:
        return spec
    scaling = spec.base.scaling.model_copy(update={"num_workers": workers})
    return spec.model_copy(update={"base": spec.base.model_copy(update={"scaling": scaling})})


def plan_processes(spec: CompareSpec, trials: list[Trial]) -> tuple[bool, str]:
    """Whether the trials train in warm processes (see the module's docstring), and the plan
    line's words for it. Call with the planned workers (`with_workers`)."""
    base: TrainSpec = spec.base
    engines = sorted({t.spec.training.engine for t in trials})
    if base.max_workers != 1 or base.scaling.elastic or base.scaling.use_gpu:
        why = f"trials of {base.max_workers} worker(s){' on GPUs' if base.scaling.use_gpu else ''}"
    elif len(engines) > 1:
        why = f"the trials use two engines ({', '.join(engines)})"
    elif spec.scheduler is not None:
        why = f"the {spec.scheduler} scheduler stops trials midway"
    else:
        return True, "warm processes: a trial trains in a process that keeps its engine and data for the next"
    return False, f"each trial starts its own Ray Train workers: {why}"
