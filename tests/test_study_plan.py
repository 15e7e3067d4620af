"""How a study plans its trials (service/compare/plan.py): workers per trial and trials at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from service import grid as grid_lib
from service.compare.plan import StudyPlan, plan_processes, plan_workers, with_workers
from service.spec import SpecError, load_spec

SEED_STUDY = Path(__file__).resolve().parent.parent / "jobs" / "seed-comparison.yaml"


def plan(overrides=(), resources=None, trials=4, trial_cpus=0) -> StudyPlan:
    spec = load_spec(SEED_STUDY, list(overrides))
    workers, why = plan_workers(spec)
    return StudyPlan(workers, why).concurrency(with_workers(spec, workers), resources or {"CPU": 2.0}, trials,
                                               trial_cpus=trial_cpus)


def test_on_cpus_one_worker_per_trial_and_a_trial_per_cpu():
    assert (plan().workers, plan().concurrent) == (1, 2)
    assert plan(resources={"CPU": 16.0}, trials=4).concurrent == 4   # never more than the trials
    assert plan(resources={"CPU": 16.0}, trials=40).concurrent == 16
    assert plan(["base.scaling.cpus_per_worker=2"], {"CPU": 5.0}).concurrent == 2
    assert "one worker per trial on CPUs" in plan().line()
    assert "Ray reports 2 CPUs, a trial needs 1" in plan().line()


def test_on_a_cluster_a_trial_also_reserves_its_own_cpu():
    from service.compare.trials import trial_resources

    assert trial_resources(embedded=True) == {"CPU": 0, "memory": 1}   # one machine: cores go to workers
    assert trial_resources(embedded=False) == {"CPU": 1}                # never on a head with 0 CPUs
    assert plan(resources={"CPU": 8.0}, trials=10, trial_cpus=1).concurrent == 4
    assert "a trial needs 2" in plan(resources={"CPU": 8.0}, trial_cpus=1).line()


def test_the_study_fixes_what_it_names():
    fixed = plan(["workers_per_trial=2", "max_concurrent_trials=1"])
    assert (fixed.workers, fixed.concurrent) == (2, 1)
    assert "workers_per_trial in the study" in fixed.line()
    assert "max_concurrent_trials in the study" in fixed.line()
    # --workers on a study is the study's worker count, not the base's
    assert plan(["scaling.num_workers=3"]).workers == 3
    assert plan(["scaling.num_workers=3"], {"CPU": 7.0}).concurrent == 2


def test_gpu_trials_keep_the_base_workers_and_fill_the_gpus():
    gpu = plan(["base.scaling.use_gpu=true", "base.scaling.num_workers=2"], {"CPU": 16.0, "GPU": 8.0}, trials=12)
    assert (gpu.workers, gpu.concurrent) == (2, 4)
    double = plan(["base.scaling.use_gpu=true", "base.scaling.num_workers=2", "base.scaling.gpus_per_worker=2"],
                  {"CPU": 16.0, "GPU": 8.0}, trials=12)
    assert double.concurrent == 2
    assert plan(["base.scaling.use_gpu=true"], {"CPU": 16.0, "GPU": 1.0}).concurrent == 1   # at least one


def test_an_elastic_base_keeps_its_range():
    spec = load_spec(SEED_STUDY, ["base.scaling.num_workers=[1, 3]"])
    workers, _ = plan_workers(spec)
    assert workers == 3 and with_workers(spec, workers).base.scaling.num_workers == (1, 3)


def test_every_trial_gets_the_planned_workers():
    spec = load_spec(SEED_STUDY)
    assert spec.base.scaling.num_workers == 2            # what `plateau train` of the base uses
    trials = grid_lib.expand(with_workers(spec, plan_workers(spec)[0]))
    assert {t.spec.scaling.num_workers for t in trials} == {1}


def processes(overrides=()) -> tuple[bool, str]:
    spec = load_spec(SEED_STUDY, list(overrides))
    spec = with_workers(spec, plan_workers(spec)[0])
    return plan_processes(spec, grid_lib.expand(spec))


def test_one_worker_trials_on_cpus_train_in_warm_processes():
    warm, words = processes()
    assert warm and words.startswith("warm processes:")
    assert processes(["workers_per_trial=1"])[0]
    spec = load_spec(SEED_STUDY)
    workers, why = plan_workers(spec)
    warm_plan = StudyPlan(workers, why, *processes()).concurrency(spec, {"CPU": 8.0}, trials=10, trial_cpus=1)
    # A warm trial's process is its worker: it needs the worker's CPU, not one more.
    assert warm_plan.concurrent == 8 and "a trial needs 1" in warm_plan.line()
    assert warm_plan.line().endswith("; " + words)
    assert warm_plan.to_json()["warm"] is True


@pytest.mark.parametrize("overrides, why", [
    (["workers_per_trial=2"], "each trial starts its own Ray Train workers: trials of 2 worker(s)"),
    (["base.scaling.use_gpu=true", "base.scaling.num_workers=1"],
     "each trial starts its own Ray Train workers: trials of 1 worker(s) on GPUs"),
    (["base.scaling.num_workers=[1, 2]"], "each trial starts its own Ray Train workers: trials of 2 worker(s)"),
    (["grid={training.engine: [tf_keras, keras_jax]}"],
     "each trial starts its own Ray Train workers: the trials use two engines (keras_jax, tf_keras)"),
    (["scheduler=asha"], "each trial starts its own Ray Train workers: the asha scheduler stops trials midway"),
])
def test_other_plans_keep_their_placement(overrides, why):
    assert processes(overrides) == (False, why)


@pytest.mark.parametrize("override, message", [
    ("max_concurrent_trials=0", "max_concurrent_trials: use auto or a whole number >= 1"),
    ("workers_per_trial=0", "workers_per_trial: use auto or a whole number >= 1"),
    ("workers_per_trial=many", "workers_per_trial: use auto or a whole number >= 1"),
])
def test_a_bad_plan_setting_is_one_line(override, message):
    with pytest.raises(SpecError) as err:
        load_spec(SEED_STUDY, [override])
    assert message in str(err.value) and "\n" not in str(err.value)
