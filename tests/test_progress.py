"""Progress lines and ETAs (service/progress.py, service/compare/watch.py) with a fake clock, and
sequential seeding's decisions (service/seeding.py). Fast: no Ray, no TensorFlow."""

from __future__ import annotations

import pytest

from service import progress
from service import grid as grid_lib
from service.compare.aggregate import SettingRecord
from service.seeding import SeedPlan
from service.compare.stats import paired
from service.compare.tables import TrialOutcome
from service.compare.watch import StudyWatch
from service.progress import Pace, QuietEcho, StudyPace
from service.spec import CompareSpec, SpecError

pytestmark = pytest.mark.filterwarnings("ignore::service.spec.SpecWarning")


class Clock:
    def __init__(self, now: float = 0.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def study(grid: dict, seeds=(7,), epochs: int = 30, **extra) -> CompareSpec:
    base = {"name": "b", "data": {"source": "sample"}, "training": {"epochs": epochs, "seed": 7},
            "scaling": {"num_workers": 1}, "reduce_lr": {"monitor": "val_accuracy", "patience": 1}}
    return CompareSpec.model_validate({"kind": "compare", "name": "study", "base": base, "grid": grid,
                                       "seeds": seeds if isinstance(seeds, dict) else list(seeds), **extra})


@pytest.mark.parametrize("seconds, text", [(0, "0s"), (59.4, "59s"), (60, "1m00s"), (185, "3m05s"),
                                           (3600, "1h00m"), (3725, "1h02m"), (-3, "0s")])
def test_durations_read_as_people_write_them(seconds, text):
    assert progress.duration(seconds) == text


def test_train_eta_uses_the_median_gap_between_epoch_lines():
    clock = Clock()
    pace = Pace(epochs=30, clock=clock)
    clock.now = 20.0  # start-up included in elapsed; no gap yet, so the epoch's own 2 s per epoch
    assert pace.tick(1, seconds=2.0) == "elapsed 20s  eta 58s"  # 29 epochs x 2 s
    clock.now = 23.0
    assert pace.tick(2, seconds=2.0) == "elapsed 23s  eta 1m24s"  # gap 3 s x 28
    clock.now = 28.0
    assert pace.tick(3, seconds=2.0) == "elapsed 28s  eta 1m48s"  # median(3, 5) = 4 s x 27
    clock.now = 29.0
    assert pace.tick(4, seconds=2.0, last=True) == "elapsed 29s"  # the run stops here: no ETA
    assert Pace(epochs=1, clock=Clock()).tick(1, 1.0) == "elapsed 0s"


def test_study_eta_spreads_the_mean_trial_over_the_concurrency():
    clock = Clock()
    pace = StudyPace(total=6, concurrency=2, clock=clock)
    assert pace.eta() is None
    pace.start("a")
    pace.start("b")
    assert pace.line() == "0/6 trials done, 2 running, elapsed 0s, eta after the first trial"
    clock.now = 100.0
    pace.finish("a")
    # 5 trials left x 100 s, minus the 100 s b has run, over 2 at a time: 200 s
    assert pace.eta() == pytest.approx(200.0)
    assert pace.line() == "1/6 trials done, 1 running, elapsed 1m40s, eta 3m20s"
    pace.finish("r", reused=True)  # a reused trial counts as done, not in the mean
    assert (pace.done, pace.finished) == (2, [100.0])


def _trials():
    spec = study({"reduce_lr.factor": [0.1, 0.5]}, seeds=[7, 8], epochs=30)
    return grid_lib.expand(spec)


def test_a_line_per_trial_epoch_names_trial_setting_seed_metric_and_lr():
    trials = _trials()
    watch = StudyWatch(trials, StudyPace(len(trials), 1, clock=Clock()))
    name = trials[2].name
    assert watch.epoch(name, {"epoch": 1, "val_accuracy": 0.909, "val_loss": 0.27, "lr": 0.01, "lr_after": 0.01}) == \
        "[3/4] reduce_lr.factor=0.5  seed 7  epoch 1/30  val_accuracy 0.9090  lr 0.01"
    assert watch.epoch(name, {"epoch": 4, "val_accuracy": 0.9375, "lr": 0.01, "lr_after": 0.005, "stop": True}) == \
        "[3/4] reduce_lr.factor=0.5  seed 7  epoch 4/30  val_accuracy 0.9375  lr 0.01 -> 0.005  early stop"
    # The trial's final result (its outcome) and unknown trials are not epochs
    assert watch.epoch(name, {"status": "ok", "epoch": 4}) is None
    assert watch.epoch("someone-else", {"epoch": 1}) is None


def test_a_finished_trial_line_carries_the_study_progress():
    trials = _trials()
    clock = Clock()
    watch = StudyWatch(trials, StudyPace(len(trials), 1, clock=clock))
    watch.started(trials[0].name)
    clock.now = 60.0
    summary = {"epochs_run": 5, "stopped_early": True, "stop_epoch": 5, "test_accuracy": 0.95, "wall_seconds": 60.0}
    line = watch.finished(trials[0].name, TrialOutcome("ok", summary))
    assert line == ("[1/4] reduce_lr.factor=0.1  seed 7  epochs 5  stop 5  test_accuracy 0.9500  60.0s"
                    "  | study: 1/4 trials done, elapsed 1m00s, eta 3m00s")


def test_quiet_trials_gives_a_status_line_at_most_every_10_seconds():
    trials = _trials()
    clock = Clock()
    watch = StudyWatch(trials, StudyPace(len(trials), 1, clock=clock), quiet_trials=True, clock=clock)
    first = watch.epoch(trials[1].name, {"epoch": 2, "val_accuracy": 0.9, "lr": 0.01})
    assert first == "study: 0/4 trials done, 1 running, elapsed 0s, eta after the first trial " \
                    "(reduce_lr.factor=0.1 seed 8 epoch 2/30)"
    clock.now = 9.9
    assert watch.epoch(trials[1].name, {"epoch": 3, "val_accuracy": 0.9, "lr": 0.01}) is None
    assert watch.status() is None
    clock.now = 10.0
    assert watch.status() == "study: 0/4 trials done, 1 running, elapsed 10s, eta after the first trial " \
                             "(reduce_lr.factor=0.1 seed 8 epoch 3/30)"
    assert StudyWatch(trials, StudyPace(4, 1)).status() is None  # only with quiet_trials


def test_quiet_echo_keeps_errors_warnings_and_the_final_summary():
    said = []
    echo = QuietEcho(said.append)
    echo("epoch 1/5  loss 0.5")
    echo("WARNING: the sample, not full MNIST")
    echo("plateau: training failed")
    progress.final(echo, "done: 5 epochs")
    progress.error(echo, "[2/4] x  seed 7  FAILED: boom")
    progress.final(said.append, "plain echo functions print it as usual")
    assert said == ["WARNING: the sample, not full MNIST", "plateau: training failed", "done: 5 epochs",
                    "[2/4] x  seed 7  FAILED: boom", "plain echo functions print it as usual"]


# --- sequential seeding -------------------------------------------------------------------------


def records(*settings):
    """Aggregate-like records: the baseline, then (label, {seed: acc}, {seed: base acc})."""
    out = [SettingRecord(setting="base", position=0, baseline=True, paired=None)]
    for i, (label, mine, base) in enumerate(settings, 1):
        out.append(SettingRecord(setting=label, position=i, baseline=False, paired=paired(mine, base)))
    return out


BASE3 = {7: 0.90, 8: 0.92, 9: 0.94}
CLEAR3 = {7: 0.91, 8: 0.93, 9: 0.95}          # +0.01 on every seed: the interval is [0.01, 0.01]
MIXED3 = {7: 0.91, 8: 0.91, 9: 0.95}          # +0.01, -0.01, +0.01: the interval includes zero


def test_seeds_start_at_the_base_seed_and_count_up():
    plan = SeedPlan.of(study({"reduce_lr.factor": [0.1, 0.5]}, seeds={"start": 3, "max": 10}))
    assert plan.sequential and plan.seeds == tuple(range(7, 17)) and plan.first_round == [7, 8, 9]
    short = SeedPlan.of(study({}, seeds={"start": 2, "max": 4, "first": 100}))
    assert short.seeds == (100, 101, 102, 103) and short.rule.min_to_stop == 4  # min: 6, or max if lower
    fixed = SeedPlan.of(study({}, seeds=[3, 1]))
    assert (fixed.sequential, fixed.first_round, fixed.after_round([], 2).stop) == (False, [3, 1], True)


def test_a_round_adds_a_seed_until_every_setting_resolves_after_the_minimum():
    plan = SeedPlan.of(study({"reduce_lr.factor": [0.1, 0.5, 0.9]}, seeds={"start": 3, "max": 10}))
    step = plan.after_round(records(("f=0.5", CLEAR3, BASE3), ("f=0.9", MIXED3, BASE3)), seeds_run=3)
    assert (step.stop, step.next_seed, step.unresolved) == (False, 10, ("f=0.9",))
    assert step.line == "after 3 seeds unresolved: f=0.9; adding seed 10"
    # Both resolved, but 3 seeds are fewer than the minimum (6): go on
    step = plan.after_round(records(("f=0.5", CLEAR3, BASE3), ("f=0.9", CLEAR3, BASE3)), seeds_run=3)
    assert step.line == "after 3 seeds every setting resolved, but a stop needs at least 6 seeds; adding seed 10"
    assert not step.stop
    base6 = {**BASE3, 10: 0.9, 11: 0.9, 12: 0.9}
    clear6 = {**CLEAR3, 10: 0.91, 11: 0.91, 12: 0.91}
    step = plan.after_round(records(("f=0.5", clear6, base6), ("f=0.9", clear6, base6)), seeds_run=6)
    assert (step.stop, step.line) == (True, "every setting resolved after 6 seeds")


def test_the_study_stops_at_max_and_names_what_stayed_unresolved():
    plan = SeedPlan.of(study({"reduce_lr.factor": [0.1, 0.5, 0.9]}, seeds={"start": 3, "max": 4, "min": 3}))
    step = plan.after_round(records(("f=0.5", CLEAR3, BASE3), ("f=0.9", MIXED3, BASE3)), seeds_run=4)
    assert (step.stop, step.line) == (True, "max 4 seeds reached; unresolved: f=0.9")
    step = plan.after_round(records(("f=0.5", CLEAR3, BASE3), ("f=0.9", CLEAR3, BASE3)), seeds_run=3)
    assert (step.stop, step.line) == (True, "every setting resolved after 3 seeds")


@pytest.mark.parametrize("seeds, message", [
    ({"start": 5, "max": 4}, "seeds: max 4 is below start 5"),
    ({"start": 3, "max": 10, "min": 11}, "seeds: min 11 is above max 10: the study could never stop early"),
    ({"start": 1, "max": 10}, "seeds: start: Input should be greater than or equal to 2"),
    ({"start": 3, "maks": 10}, "seeds: maks: Extra inputs are not permitted"),
    ([], "seeds: give at least one seed, e.g. [7, 8, 9], or {start: 3, max: 10} (got [])"),
])
def test_bad_seed_plans_are_one_line(seeds, message, tmp_path):
    from service.spec import validate

    with pytest.raises(SpecError) as err:
        validate({"kind": "compare", "name": "s", "base": {"name": "b"}, "seeds": seeds})
    assert str(err.value) == message


def test_sequential_seeding_needs_two_settings():
    from service.seeding import check_plan

    plan = SeedPlan.of(study({}, seeds={"start": 3, "max": 10}))
    with pytest.raises(SpecError, match="the grid has only one setting"):
        check_plan(plan, 1)
