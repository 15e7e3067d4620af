"""Which seeds a study runs, and when sequential seeding stops (pure: no Ray, no files).

A list of seeds (`seeds: [7, 8, 9]`) is one round: every setting runs once per seed.

A mapping (`seeds: {start: 3, max: 10}`) is sequential seeding. The seeds are `first`,
`first + 1`, ... (`first` defaults to the base spec's `training.seed`, so a study of the seed's
spec starts at 7, 8, 9). The first round runs `start` seeds for every setting; each later round
adds the next seed to every setting, the baseline included (the statistics are paired). After
every round, each setting other than the baseline is compared with it (`stats.paired` on test
accuracy); the study stops when

* every such setting is resolved (its 95% bootstrap interval excludes zero) and at least `min`
  seeds ran (default 6, or `max` if that is lower: a bootstrap interval over fewer seeds is too
  narrow, and below 6 seeds no exact test can reach p < 0.05), or
* `max` seeds ran.

Example::

    seeding = SeedPlan.of(spec)       # spec.seeds = {start: 3, max: 10}, base seed 7
    seeding.first_round               # [7, 8, 9]
    step = seeding.after_round(records, seeds_run=3)
    step.stop, step.line              # False, 'after 3 seeds: unresolved reduce_lr=on; adding seed 10'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from service.spec import CompareSpec, SequentialSeeds, SpecError


@dataclass(frozen=True)
class Step:
    """What a round's results decide: stop or not, and the line that says why."""

    stop: bool
    line: str
    unresolved: tuple[str, ...] = ()
    next_seed: Optional[int] = None


@dataclass(frozen=True)
class SeedPlan:
    seeds: tuple[int, ...]                # every seed the study may run, in order
    start: int                            # how many the first round runs
    rule: Optional[SequentialSeeds] = None  # None: a fixed list, one round

    @classmethod
    def of(cls, spec: CompareSpec) -> "SeedPlan":
        if not isinstance(spec.seeds, SequentialSeeds):
            return cls(tuple(spec.seeds), len(spec.seeds))
        rule = spec.seeds
        first = rule.first if rule.first is not None else _base_seed(spec)
        return cls(tuple(range(first, first + rule.max)), rule.start, rule)

    @property
    def sequential(self) -> bool:
        return self.rule is not None

    @property
    def first_round(self) -> list[int]:
        return list(self.seeds[:self.start])

    def after_round(self, records: list, seeds_run: int) -> Step:
        """Whether to add a seed, from the study's records (`compare.aggregate.SettingRecord`, each
        with its `paired`) after `seeds_run` seeds."""
        if self.rule is None:
            return Step(True, "")
        unresolved = tuple(r.setting for r in sorted(records, key=lambda r: r.position)
                           if not r.baseline and not (r.paired and r.paired.resolved()))
        if not unresolved and seeds_run >= self.rule.min_to_stop:
            return Step(True, f"every setting resolved after {seeds_run} seeds")
        if seeds_run >= len(self.seeds):
            listed = ", ".join(unresolved) if unresolved else "none"
            return Step(True, f"max {len(self.seeds)} seeds reached; unresolved: {listed}", unresolved)
        nxt = self.seeds[seeds_run]
        why = (f"unresolved: {', '.join(unresolved)}" if unresolved else
               f"every setting resolved, but a stop needs at least {self.rule.min_to_stop} seeds")
        return Step(False, f"after {seeds_run} seeds {why}; adding seed {nxt}", unresolved, nxt)

    def describe(self) -> str:
        """How the seeding reads in the study's first line and in comparison.md."""
        if self.rule is None:
            return f"{len(self.seeds)} seed(s)"
        return (f"sequential seeds from {self.seeds[0]}: {self.start} at first, one more per round until "
                f"every setting resolves (at least {self.rule.min_to_stop}) or {len(self.seeds)}")


def _base_seed(spec: CompareSpec) -> int:
    base = spec.base
    if isinstance(base, str):
        raise SpecError(f"base: {base!r} was not loaded; load compare specs with load_spec")
    return base.training.seed


def check_plan(seeding: SeedPlan, n_settings: int) -> None:
    """Sequential seeding compares settings with the baseline: it needs at least two."""
    if seeding.sequential and n_settings < 2:
        raise SpecError("seeds: sequential seeding compares settings with the baseline (the grid's first "
                        "setting); the grid has only one setting: list the seeds instead, e.g. [7, 8, 9]")
