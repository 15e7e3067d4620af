"""The train driver: spec -> Ray -> Ray Train's TensorFlow workers -> output files.

`run(spec)` holds the run folder's lock (`runlock`) and goes through four steps, each its own
function below:

1. `prepare`: check the address and the data before anything starts; the run's folders.
2. `finished_or_resume`: a finished run is not trained again; an interrupted one takes its
   epochs back from its newest checkpoint that can be read (`checkpoints.resume.resume_point`).
3. `fit_and_collect`: Ray (embedded, or joined at an address) runs the spec's engine's worker loop
   (`engines`) on N Ray Train workers; every rank's reports come back through a queue and become one line
   per epoch, history.csv and decisions.jsonl, rewritten after every epoch so that a failure
   never loses what was already trained.
4. `finish`: summary.json and curves.png, or one line saying what failed and how to resume.

Example::

    spec = load_spec("jobs/seed-reduce-lr.yaml", ["data.source=sample", "training.epochs=3"])
    result = run(spec)
    result.summary["stop_epoch"]
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import queue as queue_lib
import re
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Sequence

from service import cluster, engines, events, progress, raylog, rundir, runlock, runs, signals, usermodel
from service.engines import probe
from service import data as data_lib
from service.checkpoints import layout, resume
from service.compat import mlflow as compat_mlflow
from service.console import say
from service.core.messages import EpochReport, FinalReport, Message, Placement
from service.errors import cause_line
from service.files import write_atomic
from service.provenance import provenance, utc_now
from service.report import files as run_files
from service.report.lines import done_line, epoch_line, non_finite_words, placement_line, workers_phrase
from service.report.plots import import_plotting_soon, plot_curves
from service.report.records import DecisionRecord, HistoryRow
from service.report.summary import summarize
from service.spec import TrainSpec, dump_spec
from service.stopreason import StopReason

if TYPE_CHECKING:  # Ray is imported when a run starts
    from ray.train import CheckpointConfig

Echo = Callable[[str], None]
# How a worker's DeviceError reads inside the error Ray Train hands back.
DEVICE_ERROR = re.compile(r"DeviceError: (rank \d+ on .*)$", re.M)
# ... and the replica check's verdict (`replicas.ReplicaMismatch`).
REPLICA_MISMATCH = re.compile(r"ReplicaMismatch: (replicas differ .*)$", re.M)


@dataclasses.dataclass
class InProcess:
    """A run that trains in the calling process while its spec keeps its one worker: a study's
    warm trial, in a process that already imported the engine. The maths is the 1-worker run's
    (the same loop, as rank 0 of 1); no checkpoint is written (a trial that does not finish is
    trained again); `on_epoch` gets each epoch's report as a worker gives it to Ray Train, and
    `splits` keeps the data this process loaded, for the next run on the same data.

    Example::

        here = InProcess(on_epoch=lambda metrics: print(metrics["epoch"]))
        run(spec, in_process=here); run(other_spec, in_process=here)   # the data is loaded once
    """

    on_epoch: Callable[[dict], None] = lambda metrics: None
    splits: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class RunResult:
    ok: bool
    out_dir: Path
    summary: Optional[dict] = None
    error: Optional[str] = None
    history: list = dataclasses.field(default_factory=list)
    decisions: list = dataclasses.field(default_factory=list)


def run(spec: TrainSpec, address: Optional[str] = None, verbose: bool = False, fresh: bool = False,
        echo: Echo = say, callbacks: Sequence = (), data_cache: Optional[Path] = None,
        tensorboard: bool = True, command: Optional[str] = None, lock: bool = True,
        model_tried: bool = False, in_process: Optional[InProcess] = None) -> RunResult:
    """Train `spec`; raises a `BadInput` (spec, data, address) before anything starts.

    A run whose OUTPUT/NAME already holds a summary is finished and is not trained again; one
    with checkpoints but no summary was interrupted and resumes from its last checkpoint.
    `fresh=True` discards both and starts over. `callbacks` are extra Ray Train UserCallbacks
    (a Tune trial passes TuneReportCallback). Inside a running Ray (a Tune trial, a job) the
    run uses that Ray and leaves it running. `data_cache` is where full MNIST is kept.
    `tensorboard`: write OUTPUT/NAME/tensorboard/ as the epochs arrive (a study's trials do not:
    the study's driver writes their events from what they return).
    A folder that holds a run of another spec is refused (`rundir.RunFolderError`). `command`
    is the command line that asked for the run, for summary.json and the folder's lock.
    `lock`: hold OUTPUT/NAME's lock for the whole run (`runlock`; `RunLocked` while another
    command holds it); a study's trials do not, their study holds the study's folder.
    `model_tried`: `spec.model.build` was already tried on this data (`probe`), as a study does
    for all its trials before Tune starts; the run does not try it again.
    `in_process`: train a 1-worker spec in this process (`InProcess`).
    """
    if in_process is not None and (spec.max_workers != 1 or spec.scaling.use_gpu):
        raise ValueError(f"only a 1-worker run on CPUs trains in the calling process, not {spec.max_workers} "
                         f"worker(s){' on GPUs' if spec.scaling.use_gpu else ''}")
    holding = runlock.hold(rundir.RunPaths.of(spec).out_dir, command, echo) if lock else contextlib.nullcontext()
    with holding, compat_mlflow.settings_restored():  # MLflow's settings end with the run
        return _run(spec, address, verbose, fresh, echo, callbacks, data_cache, tensorboard, command, model_tried,
                    in_process)


def _run(spec: TrainSpec, address: Optional[str], verbose: bool, fresh: bool, echo: Echo, callbacks: Sequence,
         data_cache: Optional[Path], tensorboard: bool, command: Optional[str], model_tried: bool,
         in_process: Optional[InProcess]) -> RunResult:
    started, started_at = time.perf_counter(), utc_now()
    setup = prepare(spec, address, fresh, echo, data_cache, model_tried, in_process.splits if in_process else None)
    rundir.check_same_spec(spec)
    done = setup.finished_result()
    if done is not None:
        progress.final(echo, f"{spec.name} already finished: see {setup.out_dir / 'summary.json'} "
                             f"(use --fresh to train it again)")
        if not done.ok:
            progress.error(echo, f"plateau: {done.error}")
        return done
    rundir.check_writable(setup.out_dir, setup.paths.storage)
    collector = finished_or_resume(setup, echo)
    if tensorboard:
        collector.events = events.RunEvents(setup.out_dir / events.FOLDER)
    if in_process is not None:
        collector.on_report = in_process.on_epoch
    starting = progress.Startup(echo, f"starting Ray and {spec.max_workers} worker(s)")
    ray_log = setup.out_dir / raylog.LOG_FILE   # Ray's own lines, out of the user's view
    try:
        with starting, cluster.ray_session(address, cpus_needed(spec), verbose, ray_log, echo,
                                                 code=usermodel.shipped_code([spec])) as started_here:
            fit_end = fit_and_collect(setup, collector, started_here, verbose, callbacks, starting,
                                      in_process=in_process is not None)
            # The run's files before Ray stops: stopping it takes seconds nobody needs to wait for.
            return finish(setup, collector, fit_end, time.perf_counter() - started, echo,
                          provenance(started_at, command, dict(engines.ENGINES[spec.training.engine].versions)))
    except signals.Interrupted as exc:
        exc.message = _interrupted_line(exc, collector, setup.paths.checkpoints_dir)
        if collector.tracker is not None:
            collector.tracker.end("KILLED")  # the same command resumes it: the same MLflow run
        raise


# ---------------------------------------------------------------------------------------------
# 1. prepare


@dataclasses.dataclass
class RunSetup:
    """What a run works with, all checked before Ray starts."""

    spec: TrainSpec
    splits: data_lib.Splits
    steps: int          # optimizer steps per epoch, the same on every rank
    paths: rundir.RunPaths

    @property
    def out_dir(self) -> Path:
        """OUTPUT/NAME: the run's files."""
        return self.paths.out_dir

    def finished_result(self) -> Optional[RunResult]:
        """The stored result of a run that already finished, else None (a diverged run's is not ok)."""
        if not (self.out_dir / "summary.json").exists():
            return None
        summary = json.loads((self.out_dir / "summary.json").read_text())
        decisions = run_files.read_decisions(self.out_dir / "decisions.jsonl")
        history = run_files.read_history(self.out_dir / "history.csv")  # keeps nan and inf, JSON cannot
        diverged = summary.get("stop_reason") == StopReason.NON_FINITE
        return RunResult(not diverged, self.out_dir, summary=summary,
                         error=_diverged_line(HistoryRow.from_row(history[-1]), self.out_dir) if diverged else None,
                         history=history, decisions=decisions)


def prepare(spec: TrainSpec, address: Optional[str], fresh: bool, echo: Echo,
            data_cache: Optional[Path], model_tried: bool = False, loaded: Optional[dict] = None) -> RunSetup:
    """The run's setup, all checked. `loaded`: data this process already loaded (`InProcess.splits`),
    by source, validation, cache and layout; what is loaded here is added to it."""
    if address:
        cluster.check_gcs_address(address)
    if spec.tracking is not None:
        from service import tracking

        tracking.check_available(spec.tracking)
    engines.check_available(spec)
    if spec.model.build:
        usermodel.check(usermodel.resolve(spec.model.build, None))
    key = (spec.data.source, spec.data.validation, str(data_cache), data_lib.Layout.of(spec))
    splits = (loaded or {}).get(key) or data_lib.load(spec.data.source, spec.data.validation,
                                                      warn=lambda m: echo(f"WARNING: {m}"), cache_dir=data_cache,
                                                      layout=key[3])
    if loaded is not None:
        loaded[key] = splits
    if not address:  # an embedded Ray: every worker on this machine
        data_lib.check_fits(splits, spec.max_workers)
    if spec.model.build is not None and not model_tried:  # a user's model: tried on the data's shape before Ray starts
        probe.check_model(spec, engines.ENGINES[spec.training.engine], splits.x_train.shape[1:], splits.classes,
                          str(splits.x_train.dtype))
    steps = data_lib.steps_per_epoch(len(splits.x_train), spec.training.batch_size)
    paths = rundir.RunPaths.of(spec)
    if fresh and paths.out_dir.exists():
        runlock.clear(paths.out_dir)
    return RunSetup(spec, splits, steps, paths)


# ---------------------------------------------------------------------------------------------
# 2. finished or resume


class EpochCollector:
    """Gathers every rank's reports into whole epochs; prints and saves each epoch as it completes.

    Every report says how many workers its group has (an elastic run's change): an epoch is
    complete when that many ranks reported it.
    """

    def __init__(self, spec: TrainSpec, out_dir: Path, echo: Echo):
        self.spec, self.out_dir, self.echo = spec, out_dir, echo
        self.history: list[HistoryRow] = []
        self.decisions: list[DecisionRecord] = []
        self.test: dict = {}
        self.model_file: Optional[bytes] = None  # the final model (.keras bytes), from rank 0
        self.placement: dict[int, dict] = {}  # rank -> where its worker runs (the latest group's)
        self._pending: dict = {}
        self.pace = progress.Pace(spec.training.epochs)
        self.events: Optional[events.RunEvents] = None  # TensorBoard, when the run writes it
        self.tracker = None  # the run's MLflow run (tracking.RunTracker), when the spec asks for one
        self.on_report: Optional[Callable[[dict], None]] = None  # each epoch's report, as Ray Train got it
        self.shapes: tuple[tuple[int, ...], int] = ((784,), 10)  # one example's features, the classes

    def resume(self, epoch: int, saved: Optional[Path]) -> None:
        """Take the interrupted run's rows up to the checkpoint that training resumes from.

        The checkpoint holds every rank's reports up to its epoch (the driver may have died
        before it saw the last of them); without it (remote storage) the files written so far
        are what there is.
        """
        traces = layout.read_traces(saved) if saved and saved.is_dir() else {}
        if traces:
            # In epoch order: an epoch's rows may come from ranks a later, smaller group lost.
            reports = sorted(((m["epoch"], rank, m) for rank, trace in traces.items() for m in trace),
                             key=lambda item: item[:2])
            for _, rank, metrics in reports:
                self.on_message(rank, EpochReport.from_metrics(metrics), announce=False)
            return
        if (self.out_dir / "history.csv").exists():
            self.history = [HistoryRow.from_row(r) for r in run_files.read_history(self.out_dir / "history.csv")
                            if r["epoch"] <= epoch]
        if (self.out_dir / "decisions.jsonl").exists():
            self.decisions = [DecisionRecord.from_json(d) for d in run_files.read_decisions(self.out_dir / "decisions.jsonl")
                              if d["epoch"] <= epoch]

    def on_message(self, rank: int, message: Message, announce: bool = True) -> None:
        """One rank's message; an epoch (or the placement, or the test) is complete when every
        rank of the group has sent it."""
        if isinstance(message, EpochReport):
            key: tuple = (message.epoch, message.workers)
        else:
            key = (type(message).__name__, message.workers)
        arrived = self._pending.setdefault(key, {})
        arrived[rank] = message
        if len(arrived) < message.workers:
            return
        del self._pending[key]
        per_rank = [arrived[r] for r in sorted(arrived)]
        if isinstance(message, Placement):
            self.on_placement(per_rank)
        elif isinstance(message, FinalReport):
            self.on_final(per_rank[0])
        else:
            self.on_epoch(per_rank, announce)

    def on_placement(self, group: list[Placement]) -> None:
        """Every rank of a (re)started group said where it runs: print it."""
        self.placement = {p.rank: p.where() for p in group}
        self.echo(placement_line([self.placement[r] for r in sorted(self.placement)]))

    def on_final(self, rank0: FinalReport) -> None:
        self.test = {"test_loss": rank0.test_loss, "test_accuracy": rank0.test_accuracy}
        self.model_file = rank0.model_keras
        if self.events is not None:
            self.events.test(self.test, self.history[-1].epoch if self.history else 0)

    def on_epoch(self, per_rank: list[EpochReport], announce: bool = True) -> None:
        head = per_rank[0]
        row = HistoryRow.from_row(head.history_row())
        arrived = [DecisionRecord.from_json(m.decision) for m in per_rank]
        decision = arrived[0]
        previous = next((r for r in self.history if r.epoch == row.epoch - 1), row)
        # After a restart the workers report again from the checkpoint's next epoch.
        self.history = [r for r in self.history if r.epoch < row.epoch] + [row]
        self.decisions = [d for d in self.decisions if d.epoch < row.epoch]
        self.decisions += arrived
        # Files first: whatever the user saw printed is already on disk.
        run_files.write_history(self.out_dir / "history.csv", self.history_rows())
        run_files.write_decisions(self.out_dir / "decisions.jsonl", self.decision_rows())
        if self.events is not None:
            self.events.epoch(row.to_row(), head.decision)
        if self.tracker is not None:
            self.tracker.epoch(row.to_row(), head.decision)
        if announce and self.on_report is not None:
            self.on_report(head.metrics())
        if announce and len(self.history) == 1:
            import_plotting_soon()  # while training goes on, not after its last epoch
        if announce:
            pace = self.pace.tick(row.epoch, row.seconds, last=decision.stop)
            self.echo(epoch_line(row, decision, self.spec.training.epochs, pace, workers_before=previous.workers))

    def history_rows(self) -> list[dict]:
        """history.csv's rows (and what the run returns)."""
        return [r.to_row() for r in self.history]

    def decision_rows(self) -> list[dict]:
        """decisions.jsonl's rows (and what the run returns)."""
        return [d.to_json() for d in self.decisions]


def finished_or_resume(setup: RunSetup, echo: Echo) -> EpochCollector:
    """A collector holding the epochs an interrupted run already trained; the run's files begin."""
    spec = setup.spec
    collector = EpochCollector(spec, setup.out_dir, echo)
    setup.out_dir.mkdir(parents=True, exist_ok=True)
    if spec.tracking is not None:  # before the resume's epochs: those its MLflow run lacks are logged
        from service import tracking

        collector.tracker = tracking.RunTracker.open(spec, setup.out_dir, echo)
        collector.shapes = (setup.splits.feature_shape, setup.splits.classes)
    # The newest checkpoint that can be read; newer, damaged ones are set aside, each with a line.
    point = resume.resume_point(setup.paths.checkpoints_dir, spec.model.weight_shapes(), echo)
    if point.epoch:
        collector.resume(point.epoch, point.directory)
        echo(f"{spec.name}: resuming after epoch {point.epoch} from its last checkpoint (use --fresh to start over)")
    write_atomic(setup.out_dir / "spec.yaml", dump_spec(spec))
    runs.mark_started(setup.out_dir, "train")
    sizes = setup.splits.sizes()
    echo(f"{spec.name}: {sizes['n_train']} train / {sizes['n_val']} val ({spec.data.validation}) / "
         f"{sizes['n_test']} test images from {sizes['source']}, {workers_phrase(spec)}, "
         f"{setup.steps} steps/epoch")
    return collector


# ---------------------------------------------------------------------------------------------
# 3. fit and collect


def cpus_needed(spec: TrainSpec) -> float:
    """Logical CPUs the run asks Ray for: the workers' plus one for the driver's helpers."""
    return spec.max_workers * spec.scaling.cpus_per_worker + 1


def fit_and_collect(setup: RunSetup, collector: EpochCollector, started_here: bool, verbose: bool,
                    callbacks: Sequence, starting: progress.Startup, in_process: bool = False) -> dict:
    """Run the trainer on the Ray of `cluster.ray_session` (`started_here`: an embedded one, which
    cannot grow); hand every report to `collector` as it arrives; `starting` stops saying "still
    starting" once the workers said where they run. `in_process`: the loop runs in this process
    (`InProcess`), on the caller's resources, with the data and the reports' queue of this process.

    Returns {"result": Ray Train's Result} or {"error": what fit raised}: a failure is reported
    after the epochs that finished are saved.
    """
    import ray
    from ray.util.queue import Queue
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    scaling = setup.spec.scaling
    signals.take_over()  # ray.init installed a native SIGTERM handler that prints stack pages
    names = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
    if in_process:  # the caller holds the CPUs; the loop reads this process's arrays and queue
        arrays, queue = {k: getattr(setup.splits, k) for k in names}, queue_lib.Queue()
    else:
        try:
            cluster.wait_for_resources(scaling.resources_per_worker, scaling.min_workers, scaling.placement_strategy,
                                       can_grow=not started_here, timeout_s=scaling.resources_timeout_s,
                                       echo=collector.echo)
        except cluster.ResourcesTimeout as exc:
            return {"error": exc}
        arrays = {k: ray.put(getattr(setup.splits, k)) for k in names}
        # The queue is an actor: without these options it asks for a CPU and may land on a
        # worker node, and die with it.
        queue = Queue(actor_options={"num_cpus": 0, "scheduling_strategy": NodeAffinitySchedulingStrategy(
            ray.get_runtime_context().get_node_id(), soft=False)})
    config = {"spec": setup.spec.model_dump(mode="json"), "data": arrays, "steps": setup.steps,
              "classes": setup.splits.classes, "progress": queue, "attempt": uuid.uuid4().hex,
              "in_process": in_process}
    train = _in_process(setup, config, verbose) if in_process else _trainer(setup, config, callbacks, verbose).fit
    fit_end: dict = {}

    def fit() -> None:
        try:
            fit_end["result"] = train()
        except BaseException as exc:  # noqa: BLE001 - whatever ends fit here (an error, an interrupt) goes to `finish`
            # which reports it after the last epochs are saved
            fit_end["error"] = exc

    thread = threading.Thread(target=fit, name="plateau-fit", daemon=True)
    thread.start()
    while thread.is_alive() or not queue.empty():
        try:
            collector.on_message(*queue.get(timeout=0.2))
        except queue_lib.Empty:  # ray.util.queue.Empty is one too
            pass
        if collector.placement:
            starting.done()
    thread.join()
    return fit_end


def _in_process(setup: RunSetup, config: dict, verbose: bool) -> Callable[[], None]:
    """The engine's worker loop as this process runs it (`InProcess`): rank 0 of 1, without Ray
    Train, which refuses its calls inside a Tune trial. The process gets what a worker's runtime
    env would set, before the engine is first imported here."""
    engine = engines.engine_for(setup.spec)
    for name, value in engine.runtime_env(cluster.worker_runtime_env(verbose))["env_vars"].items():
        os.environ.setdefault(name, value)
    return lambda: engine.loop(config)


def _trainer(setup: RunSetup, config: dict, callbacks: Sequence, verbose: bool):
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    engine = engines.engine_for(setup.spec)  # one source of the worker loop, the backend and the environment
    scaling = setup.spec.scaling
    run_config = RunConfig(
        name=setup.spec.name,
        storage_path=setup.paths.storage,
        failure_config=FailureConfig(max_failures=scaling.max_failures) if scaling.num_workers else None,
        checkpoint_config=_checkpoint_config(setup.spec, CheckpointConfig),
        callbacks=list(callbacks),
        # A builder's code is the session's (`cluster.ray_session`): Ray uploads local code only there.
        worker_runtime_env=engine.runtime_env(cluster.worker_runtime_env(verbose)),
    )
    return DataParallelTrainer(
        engine.loop,
        backend_config=engine.backend_config(),
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=scaling.num_workers, use_gpu=scaling.use_gpu,
                                     resources_per_worker=scaling.resources_per_worker,
                                     placement_strategy=scaling.placement_strategy,
                                     elastic_resize_monitor_interval_s=scaling.resize_interval_s),
        run_config=run_config,
    )


def _checkpoint_config(spec: TrainSpec, CheckpointConfig: type[CheckpointConfig]):
    """Keep the last `keep` checkpoints, or the best `keep` by the monitored metric."""
    if spec.checkpoint.score == "recency" or spec.monitor is None:
        return CheckpointConfig(num_to_keep=spec.checkpoint.keep)
    section = spec.monitored
    return CheckpointConfig(num_to_keep=spec.checkpoint.keep, checkpoint_score_attribute=section.monitor,
                            checkpoint_score_order="max" if section.higher_is_better else "min")


# ---------------------------------------------------------------------------------------------
# 4. finish


def finish(setup: RunSetup, collector: EpochCollector, fit_end: dict, wall: float, echo: Echo,
           origin: Optional[dict] = None) -> RunResult:
    spec, out_dir = setup.spec, setup.out_dir
    error = fit_end.get("error")
    if error is None and getattr(fit_end.get("result"), "error", None) is not None:
        error = fit_end["result"].error
    if error is not None:
        message = _failure_line(error, collector, setup.paths.checkpoints_dir)
        progress.error(echo, f"plateau: {message}")
        runs.mark_failed(out_dir, message)
        _track_end(collector, None, "FAILED")
        return RunResult(False, out_dir, error=message, history=collector.history_rows(),
                         decisions=collector.decision_rows())

    summary = summarize(
        name=spec.name, data=setup.splits.sizes(), max_workers=spec.max_workers, max_epochs=spec.training.epochs,
        history=collector.history, decisions=collector.decisions, test=collector.test, wall_seconds=wall,
        placement=[collector.placement[r] for r in sorted(collector.placement)],
    )
    summary.update(origin or {})
    if collector.model_file is not None:
        write_atomic(out_dir / run_files.MODEL_FILE, collector.model_file)
    plot_curves(out_dir / "curves.png", collector.history, summary["lr_reductions"],
                       summary["stop_epoch"], title=spec.name, monitored=spec.monitored)
    run_files.write_json(out_dir / "summary.json", summary)  # last: a summary means a finished run
    _track_end(collector, summary, "FAILED" if summary["stop_reason"] == StopReason.NON_FINITE else "FINISHED")
    if summary["stop_reason"] == StopReason.NON_FINITE:
        message = _diverged_line(collector.history[-1], out_dir)
        runs.mark_failed(out_dir, message)
        progress.error(echo, f"plateau: {message}")
        return RunResult(False, out_dir, summary=summary, error=message, history=collector.history_rows(),
                         decisions=collector.decision_rows())
    runs.mark_finished(out_dir)
    progress.final(echo, done_line(summary, out_dir))
    return RunResult(True, out_dir, summary=summary, history=collector.history_rows(),
                     decisions=collector.decision_rows())


def _track_end(collector: EpochCollector, summary: Optional[dict], status: str) -> None:
    """The MLflow run's summary, files and model, and its end (the folder's files are written)."""
    if collector.tracker is not None:
        model = collector.out_dir / run_files.MODEL_FILE if collector.model_file is not None else None
        collector.tracker.finish(summary, status, model, collector.shapes)


def _diverged_line(last: HistoryRow, out_dir: Path) -> str:
    """One line for a run that stopped on a NaN or infinite metric (`last`: its last epoch)."""
    words = non_finite_words(last.metrics()) or StopReason.NON_FINITE.words
    return (f"training diverged at epoch {last.epoch} ({words}): every rank stopped "
            f"there; lower model.learning_rate and train again with --fresh (the run is in {out_dir})")


def _interrupted_line(exc: signals.Interrupted, collector: EpochCollector, checkpoints_dir: Path) -> str:
    """One line for a run stopped by Ctrl-C or SIGTERM: what is kept, and how to go on."""
    trained = collector.history[-1].epoch if collector.history else 0
    saved, _ = resume.latest(checkpoints_dir)
    kept = (f"the checkpoint of epoch {saved} is in {checkpoints_dir}: run the same command again to resume"
            if saved else "no epoch was checkpointed, so the same command starts it over")
    return f"interrupted by {exc.name} after epoch {trained}; {kept}"


def _failure_line(error: BaseException, collector: EpochCollector, checkpoints_dir: Path) -> str:
    """One line: which rank failed with what, after which epoch, and how to resume."""
    if isinstance(error, cluster.ResourcesTimeout):
        return str(error)
    device = DEVICE_ERROR.search(f"{type(error).__name__}: {error}")
    if device:  # a worker's own one-line verdict on its device: nothing to add
        return device.group(1)
    last = collector.history[-1].epoch if collector.history else 0
    where, text = "", f"{type(error).__name__}: {error}"
    failures = getattr(error, "worker_failures", None)
    if failures:
        rank, error = sorted(failures.items())[0]
        where, text = f" on rank {rank}", f"{text}\n{type(error).__name__}: {error}"
    replicas = REPLICA_MISMATCH.search(text)
    cause = cause_line(error).partition(": ")[2] or type(error).__name__
    how_on = (f"the checkpoint of epoch {last} is in {checkpoints_dir}: run the same command again to resume"
              if last else "no epoch finished, so there is no checkpoint to resume from")
    if replicas:  # every rank raised the same verdict: it is the whole story
        return f"{replicas.group(1)}; {how_on}"
    return (f"training failed{where} during epoch {last + 1}: {cause}; {how_on} "
            f"(history.csv and decisions.jsonl keep the finished epochs)")
