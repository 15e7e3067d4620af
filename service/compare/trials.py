"""The trial runner: every trial of a study as a Ray Tune trial that runs one `train.run`.

Under Ray Train V2 a Tune trial is a plain function. In a warm process (`plan.plan_processes`:
one worker per trial on CPUs) it runs the worker loop itself, as rank 0 of 1, and Tune
keeps the process for the next trial (`reuse_actors`), which finds its engine imported, its data
loaded and (keras_jax) its epoch compiled; each epoch reaches Tune from the run's own reports.
Otherwise it builds its own Ray Train trainer (through `train.run`) and passes Tune's
`TuneReportCallback` in the trainer's RunConfig, so every epoch reaches Tune while it runs.
Either way the trial returns its outcome (status, summary, history) as its last result, which is
what the study's driver reads back: no trial folder on another node's disk is needed to build
the study's tables.

Example::

    outcomes = run_tune(spec, trials, study_dir, address=None, verbose=False, echo=print)
    outcomes["study-reduce_lr-on-s7"].status        # 'ok' | 'failed' | 'stopped'
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional

from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.logger import TBXLoggerCallback

from service import cluster, envvars, progress, raylog, signals, usermodel
from service.grid import Trial
from service.compare.tables import TrialOutcome
from service.compare.watch import StudyWatch
from service.progress import StudyPace
from service.errors import cause_line
from service.spec import CompareSpec, TrainSpec

if TYPE_CHECKING:
    import ray.train
    from service.train import InProcess
    from service.compat.ray import TrainRunContext
    from ray.tune.experiment import Trial as TuneTrial

# What Tune ranks trials by (ASHA needs it in every result).
METRIC, MODE = "val_accuracy", "max"


def trial_resources(embedded: bool, warm_cpus: float = 0) -> dict[str, float]:
    """What a trial's own process reserves (its Ray Train workers reserve theirs in the placement
    group the trainer makes).

    On an embedded Ray (one machine) no CPU: the trial only waits while its workers train (Ray
    Train's controller reserves none either), so the machine's cores go to workers; Tune refuses
    a trial that asks for nothing at all, so it asks for one byte of memory. On a cluster one
    CPU: a trial must not land on a head started with none (cluster.yaml's), which keeps work
    off the head. A warm trial trains in its own process: it reserves its worker's `warm_cpus`.
    """
    if warm_cpus:
        return {"CPU": warm_cpus}
    return {"CPU": 0, "memory": 1} if embedded else {"CPU": 1}


# ---------------------------------------------------------------------------------------------
# Inside a trial


class EpochsToTune(TuneReportCallback):
    """TuneReportCallback, minus what a Tune result should not carry: the final test report (it
    has no val_accuracy, which the scheduler needs in every result; the trial returns the test
    metrics itself) and the per-rank decision record (it is in decisions.jsonl)."""

    def after_report(self, run_context: TrainRunContext, metrics: list[dict[str, Any]], checkpoint: ray.train.Checkpoint | None):
        if metrics and metrics[0].get("final"):
            return
        super().after_report(run_context, [tune_result(m) for m in metrics], checkpoint)


def tune_result(metrics: dict) -> dict:
    """An epoch's report as Tune gets it: without the decision record, with what the driver's
    per-epoch line needs of it (the rate after it, and the stop)."""
    decision = metrics.get("decision")
    decided = {"lr_after": decision["lr_after"], "reduced": bool(decision["reduced"]),
               "stop": bool(decision["stop"])} if decision else {}
    return {**{k: v for k, v in metrics.items() if k != "decision"}, **decided}


_HERE: Optional[InProcess] = None   # what this process keeps from one warm trial to the next


def _warm_process() -> InProcess:
    """This process's `train.InProcess` (made by its first trial), its epochs reported to Tune."""
    global _HERE
    from service.train import InProcess

    _HERE = _HERE or InProcess(on_epoch=lambda metrics: tune.report(tune_result(metrics)))
    return _HERE


def run_trial(config: dict) -> dict:
    """A Tune trial: one train run. Returns its outcome (summary, history, decisions) as the
    trial's final result, which Tune hands to the study's driver.

    The run's own folder is scratch on the trial's node (Tune's working directory for the
    trial): on a cluster that is another node's disk, so the driver writes the study's copy.
    It takes no lock: the study's driver holds the study's folder, trial folders included.
    """
    from service import train

    trial = config["trial"]
    scratch = Path.cwd() / "plateau-run"
    spec = TrainSpec.model_validate({**trial["spec"], "output": str(scratch)})
    verbose = bool(trial.get("verbose"))
    echo = (lambda m: print(f"[{spec.name}] {m}", flush=True)) if verbose else (lambda m: None)
    here = _warm_process() if trial.get("warm") else None
    try:
        result = train.run(spec, verbose=verbose, fresh=True, echo=echo, callbacks=[] if here else [EpochsToTune()],
                           data_cache=trial.get("data_cache"), tensorboard=False, lock=False, in_process=here,
                           model_tried=True)  # the study tried every trial's model before Tune started
    except Exception as exc:  # noqa: BLE001 - a trial's failure, of any kind, is its row, not the study's end
        return {"status": "failed", "error": cause_line(exc), METRIC: float("nan")}
    outcome = {"history": result.history, "decisions": result.decisions, "scratch": str(scratch / spec.name)}
    if not result.ok:
        return {"status": "failed", "error": result.error, **outcome, METRIC: float("nan")}
    best = result.summary.get("best_val_accuracy")
    return {"status": "ok", "error": "", "summary": result.summary, **outcome,
            METRIC: best if best is not None else float("nan")}


# ---------------------------------------------------------------------------------------------
# The study's driver


class StudyLines(tune.Callback):
    """Forwards Tune's events to the study's `StudyWatch`, which words the lines."""

    def __init__(self, watch: StudyWatch, echo: Callable[[str], None]):
        self.watch, self.echo = watch, echo

    def _say(self, line: Optional[str], failed: bool = False) -> None:
        if line and failed:
            progress.error(self.echo, line)
        elif line:
            self.echo(line)

    def on_trial_start(self, iteration: int, trials: list[TuneTrial], trial: TuneTrial, **info):
        self.watch.started(_trial_dirname(trial))

    def on_trial_result(self, iteration: int, trials: list[TuneTrial], trial: TuneTrial, result: dict, **info):
        self._say(self.watch.epoch(_trial_dirname(trial), result))

    def on_step_end(self, iteration: int, trials: list[TuneTrial], **info):
        self._say(self.watch.status())

    def _finished(self, tune_trial: TuneTrial, error: BaseException | None = None) -> None:
        outcome = TrialOutcome.from_tune(tune_trial.last_result, error)
        self._say(self.watch.finished(_trial_dirname(tune_trial), outcome), failed=outcome.status != "ok")

    def on_trial_complete(self, iteration: int, trials: list[TuneTrial], trial: TuneTrial, **info):
        self._finished(trial)

    def on_trial_error(self, iteration: int, trials: list[TuneTrial], trial: TuneTrial, **info):
        self._finished(trial, error=RuntimeError("the trial's process died"))


class NoTuneEvents(TBXLoggerCallback):
    """Takes the place of Tune's own TensorBoard logger (Tune adds one unless one is given): the
    study's driver writes each trial's events under trials/NAME/tensorboard/ instead, so that
    `tensorboard --logdir OUTPUT/STUDY` shows one set per trial, not two."""

    def log_trial_start(self, trial: TuneTrial):
        pass

    def log_trial_result(self, iteration: int, trial: TuneTrial, result: dict):
        pass

    def log_trial_end(self, trial: TuneTrial, failed: bool = False):
        pass


def _trial_dirname(tune_trial: TuneTrial) -> str:
    return tune_trial.config["trial"]["spec"]["name"]


def study_cpus(trials: list[Trial]) -> int:
    """Logical CPUs for an embedded Ray: the machine's, or more when one trial's workers need more
    (they then share the cores)."""
    return max(os.cpu_count() or 1, math.ceil(max(t.spec.max_workers * t.spec.scaling.cpus_per_worker for t in trials)))


def _tuner(spec: CompareSpec, trials: list[Trial], study_dir: Path, verbose: bool, echo: Callable[[str], None], data_cache: Path | None,
           watch: StudyWatch, concurrent: int, embedded: bool, warm: bool):
    scheduler = None
    if spec.scheduler == "asha":
        scheduler = tune.schedulers.ASHAScheduler(
            time_attr="training_iteration", grace_period=1,
            max_t=max(t.spec.training.epochs for t in trials) + 2)  # never cut the final report
    space = [{"spec": t.spec.model_dump(mode="json"), "verbose": verbose, "warm": warm,
              "data_cache": str(data_cache) if data_cache else None} for t in trials]
    warm_cpus = spec.base.scaling.cpus_per_worker if warm else 0
    return tune.Tuner(
        tune.with_resources(run_trial, trial_resources(embedded, warm_cpus)),
        param_space={"trial": tune.grid_search(space)},
        tune_config=tune.TuneConfig(metric=METRIC, mode=MODE, scheduler=scheduler,
                                    max_concurrent_trials=concurrent, reuse_actors=warm,
                                    trial_dirname_creator=_trial_dirname),
        run_config=tune.RunConfig(name=spec.name, storage_path=str(study_dir / "tune"),
                                  callbacks=[StudyLines(watch, echo), NoTuneEvents()],
                                  verbose=1 if verbose else 0),
    )


@dataclasses.dataclass
class StudyRay:
    """The Ray a study runs on: what it reports (`plan.StudyPlan.concurrency` plans from it), and
    whether the study started it (embedded, one machine) or joined a cluster."""

    resources: dict[str, float]
    embedded: bool


@contextlib.contextmanager
def study_session(spec: CompareSpec, trials: list[Trial], address: Optional[str], verbose: bool,
                  echo: Callable[[str], None], log: Optional[Path] = None) -> Iterator[StudyRay]:
    """Ray for the study (joined or embedded), once every trial's workers could be placed; Ray's
    own lines (the trials' output among them) go to `log`."""
    import ray

    code = usermodel.shipped_code(t.spec for t in trials)
    with cluster.ray_session(address, study_cpus(trials), verbose, log, echo, code=code) as started_here:
        signals.take_over()  # ray.init installed a native SIGTERM handler that prints stack pages
        for t in trials:  # each trial's workers must fit, or no trial could ever start
            scaling = t.spec.scaling
            cluster.wait_for_resources(scaling.resources_per_worker, t.spec.max_workers, scaling.placement_strategy,
                                       can_grow=not started_here, timeout_s=scaling.resources_timeout_s, echo=echo)
        yield StudyRay(dict(ray.cluster_resources()), embedded=started_here and not address)


def run_tune(spec: CompareSpec, trials: list[Trial], study_dir: Path, address: Optional[str],
             verbose: bool, echo: Callable[[str], None], data_cache: Optional[Path] = None,
             watch: Optional[StudyWatch] = None, concurrent: int = 1,
             embedded: Optional[bool] = None, warm: bool = False) -> dict[str, TrialOutcome]:
    """Run the trials on Ray Tune, `concurrent` at a time; trial name -> outcome. Raises whatever
    keeps the study itself from running (Ray, Tune). `watch` words the lines printed meanwhile
    (default: a line per trial epoch, over these trials). Inside `study_session` it uses that
    session's Ray, and `embedded` says whether that session started it (a nested session cannot
    tell: it only joins). `warm`: the trials train in warm processes (`plan.plan_processes`)."""
    if watch is None:
        watch = StudyWatch(trials, StudyPace(len(trials), concurrent))
    by_name = {t.name: t for t in trials}
    with study_session(spec, trials, address, verbose, echo, study_dir / raylog.LOG_FILE) as ray_here:
        embedded = ray_here.embedded if embedded is None else embedded
        tuner = _tuner(spec, trials, study_dir, verbose, echo, data_cache, watch, concurrent, embedded, warm)
        if (study_dir / "tune" / spec.name).exists():  # Tune's bookkeeping of an earlier study run
            shutil.rmtree(study_dir / "tune" / spec.name)
        # Tune's own SIGINT handler would end the study as if it had finished (exit 0); without it
        # Ctrl-C reaches `signals`, as SIGTERM does, and the study ends as an interrupted run.
        with cluster.tune_console(verbose), envvars.environment(TUNE_DISABLE_SIGINT_HANDLER="1"):
            results = tuner.fit()
        outcomes = {}
        for result in results:
            name = (result.config or {}).get("trial", {}).get("spec", {}).get("name")
            if name in by_name:
                outcomes[name] = TrialOutcome.from_tune(result.metrics, result.error)
    return outcomes
