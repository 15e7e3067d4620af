"""The train driver: spec -> Ray -> TensorflowTrainer -> output files.

`run(spec)` checks the data before any worker starts, starts an embedded Ray (or joins one at
an address), runs `worker.train_loop_per_worker` on N Ray Train workers, prints one line per
epoch as reports arrive, and writes OUTPUT/NAME/: spec.yaml, history.csv, decisions.jsonl,
summary.json and curves.png. History and decisions are rewritten after every epoch, so a
failure never loses what was already trained.

Example::

    spec = load_spec("jobs/seed-reduce-lr.yaml", ["data.source=sample", "training.epochs=3"])
    result = run(spec)
    result.summary["stop_epoch"]
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Optional, Sequence

from service import data as data_lib
from service import report
from service.spec import TrainSpec, dump_spec

# Environment of every training worker. tf_keras is what we import, but Ray's TF helpers and
# any `tf.keras` reference must resolve to Keras 2 as well; Keras 3 cannot run MWMS.
WORKER_ENV = {"TF_USE_LEGACY_KERAS": "1"}
QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONWARNINGS": "ignore", "RAY_DEDUP_LOGS": "1"}


@dataclasses.dataclass
class RunResult:
    ok: bool
    out_dir: Path
    summary: Optional[dict] = None
    error: Optional[str] = None
    history: list = dataclasses.field(default_factory=list)
    decisions: list = dataclasses.field(default_factory=list)


def output_dir(spec: TrainSpec) -> Path:
    return Path(spec.output) / spec.name


def cpus_needed(spec: TrainSpec) -> float:
    """Logical CPUs the run asks Ray for: the workers' plus one for the driver's helpers."""
    return max(spec.scaling.num_workers, 1) * spec.scaling.cpus_per_worker + 1


class AddressError(ValueError):
    """The Ray address cannot be used: one line saying why and what to pass instead."""


def check_address(address: str) -> None:
    """Fail fast, before anything starts, on an address Ray would retry for a long time."""
    if address == "auto":
        return
    if "://" in address and not address.startswith("ray://"):
        raise AddressError(f"--address {address}: give the cluster's GCS address HOST:6379 (or 'auto'); "
                           f"http://HOST:8265 is the job server, used by 'plateau submit'")
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise AddressError(f"--address {address}: expected HOST:PORT (e.g. 10.0.0.5:6379) or 'auto'")
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
    except OSError as exc:
        raise AddressError(f"--address {address}: nothing answers there ({exc.strerror or exc}); "
                           f"start the cluster with 'ray start --head' or check the address") from None


def start_ray(address: Optional[str], cpus: float, verbose: bool) -> bool:
    """Join `address`, or start an embedded Ray sized for the job. True if we started it.

    Logical CPUs may exceed physical cores: two workers on a two-core laptop share them.
    """
    import ray

    if ray.is_initialized():
        return False
    quiet = dict(log_to_driver=verbose, logging_level=logging.INFO if verbose else logging.ERROR)
    if address:
        try:
            ray.init(address=address, **quiet)
        except (ConnectionError, RuntimeError) as exc:
            raise AddressError(f"--address {address}: cannot join that Ray cluster ({str(exc).splitlines()[0]})") from None
        return True
    ray.init(num_cpus=max(int(cpus + 0.999), os.cpu_count() or 1), include_dashboard=False, **quiet)
    return True


@contextlib.contextmanager
def _quiet_stderr(enabled: bool):
    """Send file descriptor 2 to /dev/null: TensorFlow's C++ start-up banner ignores
    TF_CPP_MIN_LOG_LEVEL because it is printed before its logging is configured."""
    if not enabled:
        yield
        return
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class _Run:
    """Collects reports into history and decisions, printing and saving after each epoch."""

    def __init__(self, spec: TrainSpec, out_dir: Path, echo: Callable[[str], None]):
        self.spec, self.out_dir, self.echo = spec, out_dir, echo
        self.history: list[dict] = []
        self.decisions: list[dict] = []
        self.test: dict = {}
        self.world = spec.workers
        self._pending: dict = {}

    def resume(self, epoch: int, checkpoint: Optional[Path]) -> None:
        """Take the interrupted run's rows up to the checkpoint that training resumes from.

        The checkpoint holds every rank's reports up to its epoch (the driver may have died
        before it saw the last of them); without it (remote storage) the files written so far
        are what there is.
        """
        traces = [report.read_trace(checkpoint, rank) for rank in range(self.world)] if checkpoint else []
        if traces and all(traces):
            for rank, trace in enumerate(traces):
                for metrics in trace:
                    self.on_message(rank, metrics, announce=False)
            return
        if (self.out_dir / "history.csv").exists():
            self.history = [r for r in report.read_history(self.out_dir / "history.csv") if r["epoch"] <= epoch]
        if (self.out_dir / "decisions.jsonl").exists():
            self.decisions = [d for d in report.read_decisions(self.out_dir / "decisions.jsonl")
                              if d["epoch"] <= epoch]

    def on_message(self, rank: int, metrics: dict, announce: bool = True) -> None:
        """One rank's report; an epoch is complete when every rank has sent it."""
        key = "final" if metrics.get("final") else metrics["epoch"]
        arrived = self._pending.setdefault(key, {})
        arrived[rank] = metrics
        if len(arrived) == self.world:
            del self._pending[key]
            self.on_report([arrived[r] for r in sorted(arrived)], announce)

    def on_report(self, per_rank: list[dict], announce: bool = True) -> None:
        head = per_rank[0]
        if head.get("final"):
            self.test = {"test_loss": head["test_loss"], "test_accuracy": head["test_accuracy"]}
            return
        row = {k: head[k] for k in report.HISTORY_COLUMNS}
        # After a restart the workers report again from the checkpoint's next epoch.
        self.history = [r for r in self.history if r["epoch"] < row["epoch"]] + [row]
        self.decisions = [d for d in self.decisions if d["epoch"] < row["epoch"]]
        self.decisions += [m["decision"] for m in per_rank]
        # Files first: whatever the user saw printed is already on disk.
        report.write_history(self.out_dir / "history.csv", self.history)
        report.write_decisions(self.out_dir / "decisions.jsonl", self.decisions)
        if announce:
            self.echo(report.epoch_line(row, head["decision"], self.spec.training.epochs))


def say(line: str) -> None:
    """Print a progress line now, also when stdout is a pipe (tee, a job log, a test)."""
    print(line, flush=True)


def run(spec: TrainSpec, address: Optional[str] = None, verbose: bool = False, fresh: bool = False,
        echo: Callable[[str], None] = say, callbacks: Sequence = ()) -> RunResult:
    """Train `spec`; raises data.DataError for bad data before anything starts.

    A run whose OUTPUT/NAME already holds a summary is finished and is not trained again; one
    with checkpoints but no summary was interrupted and resumes from its last checkpoint.
    `fresh=True` discards both and starts over. `callbacks` are extra Ray Train UserCallbacks
    (a Tune trial passes TuneReportCallback). Inside a running Ray (a Tune trial, a job)
    the run uses that Ray and leaves it running.
    """
    started = time.perf_counter()
    if address:
        check_address(address)
    splits = data_lib.load(spec.data.source, spec.data.validation, warn=lambda m: echo(f"WARNING: {m}"))
    steps = data_lib.steps_per_epoch(len(splits.x_train), spec.training.batch_size, spec.workers)

    out_dir = output_dir(spec)
    storage = spec.scaling.storage_path or str((out_dir / "checkpoints").resolve())
    if fresh and out_dir.exists():
        shutil.rmtree(out_dir)
    if (out_dir / "summary.json").exists():
        echo(f"{spec.name} already finished: see {out_dir / 'summary.json'} (use --fresh to train it again)")
        return RunResult(True, out_dir, summary=json.loads((out_dir / "summary.json").read_text()),
                         history=report.read_history(out_dir / "history.csv"),
                         decisions=report.read_decisions(out_dir / "decisions.jsonl"))
    run_state = _Run(spec, out_dir, echo)
    resume_epoch, resume_dir = _last_checkpoint(Path(storage, spec.name))
    if resume_epoch:
        run_state.resume(resume_epoch, resume_dir)
        echo(f"{spec.name}: resuming after epoch {resume_epoch} from its last checkpoint (use --fresh to start over)")
    out_dir.mkdir(parents=True, exist_ok=True)
    report.write_atomic(out_dir / "spec.yaml", dump_spec(spec))
    sizes = splits.sizes()
    echo(f"{spec.name}: {sizes['n_train']} train / {sizes['n_val']} val ({spec.data.validation}) / "
         f"{sizes['n_test']} test images from {sizes['source']}, {spec.workers} worker(s) "
         f"x batch {spec.training.batch_size // spec.workers}, {steps} steps/epoch")

    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.v2.tensorflow.tensorflow_trainer import TensorflowTrainer
    from ray.util.queue import Empty, Queue

    with _quiet_stderr(enabled=not verbose):  # TensorFlow's import banner is noise here
        from service.worker import train_loop_per_worker

    # Ray Train's controller collects reports when it polls its workers (every 2 s by default),
    # and a worker's next report waits until the previous one was collected: with 1-second
    # epochs, half of every epoch-to-epoch cycle went waiting. The driver's value of this
    # variable is handed to the controller.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    we_started = start_ray(address, cpus_needed(spec), verbose)
    try:
        arrays = {k: ray.put(getattr(splits, k)) for k in
                  ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")}
        queue = Queue()
        scaling = spec.scaling
        resources = {"CPU": scaling.cpus_per_worker}
        if scaling.use_gpu:
            resources["GPU"] = scaling.gpus_per_worker
        env = dict(WORKER_ENV, **({} if verbose else QUIET_ENV))
        run_config = RunConfig(
            name=spec.name,
            storage_path=storage,
            failure_config=FailureConfig(max_failures=scaling.max_failures) if scaling.num_workers else None,
            checkpoint_config=_checkpoint_config(spec, CheckpointConfig),
            callbacks=list(callbacks),
            worker_runtime_env={"env_vars": env},
        )
        trainer = TensorflowTrainer(
            train_loop_per_worker,
            train_loop_config={"spec": spec.model_dump(mode="json"), "data": arrays, "steps": steps,
                               "progress": queue, "attempt": uuid.uuid4().hex},
            scaling_config=ScalingConfig(num_workers=scaling.num_workers, use_gpu=scaling.use_gpu,
                                         resources_per_worker=resources),
            run_config=run_config,
        )
        outcome: dict = {}

        def fit() -> None:
            try:
                outcome["result"] = trainer.fit()
            except BaseException as exc:  # reported below, after the last epochs are saved
                outcome["error"] = exc

        thread = threading.Thread(target=fit, name="plateau-fit", daemon=True)
        thread.start()
        while thread.is_alive() or not queue.empty():
            try:
                run_state.on_message(*queue.get(timeout=0.2))
            except Empty:
                continue
        thread.join()
    finally:
        if we_started:
            ray.shutdown()

    wall = time.perf_counter() - started
    error = outcome.get("error")
    if error is None and getattr(outcome.get("result"), "error", None) is not None:
        error = outcome["result"].error
    if error is not None:
        message = _failure_line(error, run_state, Path(storage, spec.name))
        echo(f"plateau: {message}")
        return RunResult(False, out_dir, error=message, history=run_state.history,
                         decisions=run_state.decisions)

    summary = report.summarize(
        name=spec.name, data=sizes, workers=spec.workers, max_epochs=spec.training.epochs,
        history=run_state.history, decisions=run_state.decisions, test=run_state.test,
        wall_seconds=wall,
    )
    report.write_json(out_dir / "summary.json", summary)
    report.plot_curves(out_dir / "curves.png", run_state.history, summary["lr_reductions"],
                       summary["stop_epoch"], title=spec.name)
    echo(f"done: {summary['epochs_run']} epochs, test accuracy {summary['test_accuracy']:.4f}, "
         f"lr reductions at {[r['epoch'] for r in summary['lr_reductions']] or 'none'}"
         f"{', stopped early at epoch ' + str(summary['stop_epoch']) if summary['stopped_early'] else ''}"
         f" -> {out_dir}")
    return RunResult(True, out_dir, summary=summary, history=run_state.history, decisions=run_state.decisions)


def _last_checkpoint(run_dir: Path) -> tuple[Optional[int], Optional[Path]]:
    """(epoch, directory) of the checkpoint Ray Train will resume this run from.

    Read from Ray Train's own record of the run; (None, None) when there is none (or the
    storage is not a local path).
    """
    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    try:
        latest = json.loads(snapshot.read_text()).get("latest_checkpoint_result") or {}
        return int(latest["metrics"]["epoch"]), run_dir / latest["checkpoint_dir_name"]
    except (OSError, ValueError, KeyError, TypeError):
        return None, None


def _checkpoint_config(spec: TrainSpec, CheckpointConfig):
    """Keep the last `keep` checkpoints, or the best `keep` by the monitored metric."""
    if spec.checkpoint.score == "recency" or spec.monitor is None:
        return CheckpointConfig(num_to_keep=spec.checkpoint.keep)
    section = spec.reduce_lr or spec.early_stopping
    higher = section.mode == "max" or (section.mode == "auto" and "acc" in section.monitor)
    return CheckpointConfig(num_to_keep=spec.checkpoint.keep, checkpoint_score_attribute=section.monitor,
                            checkpoint_score_order="max" if higher else "min")


def _failure_line(error: BaseException, run_state: _Run, checkpoints: Path) -> str:
    """One line: which rank failed with what, after which epoch, and how to resume."""
    last = run_state.history[-1]["epoch"] if run_state.history else 0
    where = ""
    failures = getattr(error, "worker_failures", None)
    if failures:
        rank, error = sorted(failures.items())[0]
        where = f" on rank {rank}"
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    cause = lines[-1] if lines else type(error).__name__
    resume = (f"the checkpoint of epoch {last} is in {checkpoints}: run the same command again to resume"
              if last else "no epoch finished, so there is no checkpoint to resume from")
    return (f"training failed{where} during epoch {last + 1}: {cause[:300]}; {resume} "
            f"(history.csv and decisions.jsonl keep the finished epochs)")
