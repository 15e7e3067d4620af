"""MLflow tracking: a train run as one MLflow run, a study as a parent run with a run per trial.

Only the driver logs (the process that already writes the run's folder); the workers never
import MLflow, and MLflow is imported only when a spec asks for tracking. What lands where:

* a train run: the resolved spec as params (dotted keys), each epoch's loss, accuracy, val_loss,
  val_accuracy, lr and workers as metrics at step = epoch as the epoch arrives, with the decisions
  (`decisions/lr_reduced`, `decisions/lr_after`, `decisions/stop`, and a tag per LR reduction and
  for the stop); at the end the summary's figures as metrics and tags, the folder's files as
  artifacts and `model.keras` as an MLflow model (`service/mlflow_model.py`);
* a study: a parent run (the study spec as params, the comparison files as artifacts, each
  setting's paired statistics as metrics) and a nested run per trial (its grid values and seed
  as params, its epochs, summary and files).

The MLflow ids live in the folder's `mlflow.json`, so the same command resuming an interrupted
run or study continues the same MLflow runs and logs only the epochs (trials) they lack.
Tracking never fails a run: the first error of the tracking store is one `warning:` line, and
tracking stays off for the rest of the command.

Example::

    tracker = RunTracker.open(spec, out_dir, echo)   # None when spec.tracking is None
    tracker.epoch(row, decision)
    tracker.finish(summary, "FINISHED")
"""

from __future__ import annotations

import csv
import importlib.util
import json
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from service.compat import mlflow as compat_mlflow
from service.errors import BadInput, first_line, one_line
from service.engines import ENGINES
from service.report import files as run_files
from service.spec import CompareSpec, TrackingSpec, TrainSpec

Echo = Callable[[str], None]
IDS_FILE = "mlflow.json"  # {"tracking_uri", "experiment_id", "run_id"(, "trials": {name: run_id})}
EPOCH_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy", "lr", "workers")
RUN_FILES = ("spec.yaml", "history.csv", "decisions.jsonl", "summary.json", "curves.png")
# A study folder's files; plan.json is `compare.plan.PLAN_FILE` (tracking sits below compare/).
STUDY_FILES = ("comparison.csv", "settings.csv", "comparison.md", "comparison.png", "plan.json")
SUMMARY_METRICS = ("test_accuracy", "test_loss", "test_error", "best_epoch", "best_val_accuracy", "best_val_loss",
                   "stop_epoch", "epochs_run", "final_lr", "wall_seconds")
SUMMARY_TAGS = ("stop_reason", "stopped_early", "replicas_identical", "ranks_agree", "started_at", "finished_at",
                "git_commit", "command")
SETTINGS_METRICS = ("test_accuracy_mean", "test_accuracy_sd", "n_ok", "n_seeds", "beats", "diff_mean", "diff_sd",
                    "diff_ci_low", "diff_ci_high", "p_value", "p_sign", "seeds_needed")
MODEL_NAME = "model"  # `runs:/RUN_ID/model` loads it
# The model's code, copied into the logged model (never imported here: it registers itself with MLflow),
# and the artifact key under which its KerasFile finds model.keras.
MODEL_CODE = Path(__file__).with_name("mlflow_model.py")
KERAS_ARTIFACT = "keras"
BATCH = 100  # MLflow's most params per log_batch call


class TrackingError(BadInput):
    """Tracking asked for but impossible before anything starts (exit 2)."""


def check_available(tracking: Optional[TrackingSpec]) -> None:
    """Raise TrackingError when a spec asks for MLflow and it is not installed."""
    if tracking is not None and importlib.util.find_spec("mlflow") is None:
        raise TrackingError('tracking: MLflow is not installed; pip install -e ".[mlflow]" (or pip install '
                            'mlflow), or drop the spec\'s tracking (and --mlflow, MLFLOW_TRACKING_URI)')


def flat_params(data: dict, prefix: str = "") -> dict[str, str]:
    """A nested spec as MLflow params: dotted keys, YAML-like values (`null`, `true`, `[1, 2]`)."""
    out: dict[str, str] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(flat_params(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = json.dumps(value) if not isinstance(value, str) else value
    return out


def _client(uri: Optional[str]):
    """An MlflowClient for `uri` set up for a driver: short HTTP waits, MLflow's own log lines off."""
    compat_mlflow.driver_settings()  # short HTTP waits, a folder store allowed, no telemetry; a user's own setting wins
    logging.getLogger("mlflow").setLevel(logging.ERROR)  # its INFO lines (database set-up) are noise here
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


class _Tracker:
    """The MLflow client of one command, off for good after its first failure (one warning)."""

    def __init__(self, tracking: TrackingSpec, folder: Path, echo: Echo):
        self.tracking, self.folder, self.echo = tracking, Path(folder), echo
        self.enabled = True
        self.client: Any = None
        self.ids: dict = {}

    @property
    def uri(self) -> str:
        return self.tracking.mlflow or "MLflow's default store"

    @classmethod
    def open(cls, spec: Any, folder: Path, echo: Echo) -> Optional["_Tracker"]:
        """The command's tracker (its MLflow run found or made, the spec logged), or None untracked."""
        if spec.tracking is None:
            return None
        tracker = cls(spec.tracking, folder, echo)
        tracker.safely(tracker._start, spec)
        return tracker

    def _start(self, spec: Any) -> None:
        raise NotImplementedError

    def _begin(self, name: str, role: str) -> Any:
        """Connect, then find or make the command's own MLflow run; its id is kept in the folder."""
        self.client = _client(self.tracking.mlflow)
        self.ids = self._read_ids()
        run = self._open_run(name, {"plateau.kind": role}, run_id=self.ids.get("run_id"))
        self.ids["run_id"] = run.info.run_id
        self.ids.setdefault("experiment_id", run.info.experiment_id)
        return run

    def safely(self, what: Callable, *args: Any) -> Any:
        """Run a tracking step; on any error warn once and turn tracking off (the run goes on)."""
        if not self.enabled:
            return None
        try:
            with warnings.catch_warnings():  # MLflow's advice on signatures and type hints
                warnings.simplefilter("ignore")
                # MLflow's own threads reset the filters under us (catch_warnings is not thread-safe):
                # drop what gets through; catch_warnings puts showwarning back.
                warnings.showwarning = lambda *args, **kwargs: None
                return what(*args)
        except Exception as exc:  # noqa: BLE001 - a tracking store's failure must never end the run
            self.enabled = False
            self.echo(f"warning: MLflow tracking at {self.uri} failed ({one_line(first_line(exc), 200)}); "
                      f"the rest of this run is not logged there, its folder {self.folder} has everything")
            return None

    def _open_run(self, name: str, tags: dict, parent: Optional[str] = None, run_id: Optional[str] = None):
        """The MLflow run `run_id` (set running again), else a new run in the spec's experiment."""
        from mlflow.exceptions import MlflowException

        if run_id:
            try:
                run = self.client.get_run(run_id)
                self.client.update_run(run_id, status="RUNNING")
                return run
            except MlflowException as exc:
                if exc.error_code != compat_mlflow.NOT_FOUND:
                    raise  # a store that does not answer: not a reason to start another run
        if parent:
            tags = {**tags, "mlflow.parentRunId": parent}
        return self.client.create_run(self._experiment_id(), run_name=name, tags=tags)

    def _experiment_id(self) -> str:
        if "experiment_id" not in self.ids:
            found = self.client.get_experiment_by_name(self.tracking.experiment)
            self.ids["experiment_id"] = (found.experiment_id if found is not None
                                         else self.client.create_experiment(self.tracking.experiment))
        return self.ids["experiment_id"]

    def _read_ids(self) -> dict:
        """The folder's MLflow ids, when they are of this tracking URI (another store: start anew)."""
        path = self.folder / IDS_FILE
        try:
            ids = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        return ids if ids.get("tracking_uri") == self.tracking.mlflow else {}

    def _write_ids(self) -> None:
        run_files.write_json(self.folder / IDS_FILE, {"tracking_uri": self.tracking.mlflow, **self.ids})

    def _log_params(self, run_id: str, params: dict[str, str], logged: dict) -> None:
        """Params the run does not hold yet (MLflow refuses to change one; a resume may move `output`)."""
        from mlflow.entities import Param

        new = [Param(k, v) for k, v in params.items() if k not in logged]
        for start in range(0, len(new), BATCH):
            self.client.log_batch(run_id, params=new[start:start + BATCH])

    def _log_files(self, run_id: str, folder: Path, names: Iterable[str]) -> None:
        for name in names:
            if (folder / name).is_file():
                self.client.log_artifact(run_id, str(folder / name))


# ---------------------------------------------------------------------------------------------
# A train run


class RunTracker(_Tracker):
    """One train run as one MLflow run, logged from the driver as its epochs arrive."""

    run_id: Optional[str] = None
    last_step = 0  # the last epoch the MLflow run holds: a resume logs only later ones

    def _start(self, spec: TrainSpec) -> None:
        self.engine = ENGINES[spec.training.engine]  # whose Keras loads the model
        run = self._begin(spec.name, "train")
        self.run_id = run.info.run_id
        self._write_ids()
        history = self.client.get_metric_history(self.run_id, "val_loss")
        self.last_step = max((m.step for m in history), default=0)
        self._log_params(self.run_id, flat_params(spec.model_dump(mode="json")), run.data.params)

    def epoch(self, row: dict, decision: dict) -> None:
        """One epoch's metrics at step = epoch, and its decisions; an epoch already logged is skipped."""
        if self.enabled and self.run_id and row["epoch"] > self.last_step:
            self.safely(self._epoch, row, decision)

    def _epoch(self, row: dict, decision: dict) -> None:
        from mlflow.entities import Metric, RunTag

        step, now = row["epoch"], int(time.time() * 1000)
        values = {k: row[k] for k in EPOCH_METRICS}
        values.update({"decisions/lr_reduced": float(bool(decision.get("reduced"))),
                       "decisions/lr_after": decision.get("lr_after"),
                       "decisions/stop": float(bool(decision.get("stop")))})
        metrics = [Metric(k, float(v), now, step) for k, v in values.items() if v is not None]
        tags = []
        if decision.get("reduced"):
            tags.append(RunTag(f"decisions.lr_reduced.epoch_{step}", f"{decision['lr_before']} -> {decision['lr_after']}"))
        if decision.get("stop"):
            tags += [RunTag("decisions.stop_epoch", str(step)),
                     RunTag("decisions.stop_reason", str(decision.get("stop_reason")))]
        self.client.log_batch(self.run_id, metrics=metrics, tags=tags)
        self.last_step = step

    def finish(self, summary: Optional[dict], status: str, model_file: Optional[Path] = None,
               shapes: tuple[tuple[int, ...], int] = ((784,), 10)) -> None:
        """The summary's figures, the folder's files and the model (`shapes`: one example's features
        and the number of classes, its signature); the MLflow run ends as `status` (FINISHED,
        FAILED, KILLED)."""
        if self.enabled and self.run_id:
            self.safely(self._finish, summary, status, model_file, shapes)

    def end(self, status: str) -> None:
        """Only the MLflow run's end (Ctrl-C: no time for files; the resume logs them)."""
        if self.enabled and self.run_id:
            self.safely(self.client.set_terminated, self.run_id, status)

    def _finish(self, summary: Optional[dict], status: str, model_file: Optional[Path],
                shapes: tuple[tuple[int, ...], int]) -> None:
        if summary is not None:
            self._log_summary(self.run_id, summary)
        self._log_files(self.run_id, self.folder, RUN_FILES)
        if model_file is not None and model_file.is_file():
            self._log_model(model_file, shapes)
        self.client.set_terminated(self.run_id, status)

    def _log_summary(self, run_id: str, summary: dict) -> None:
        from mlflow.entities import Metric, RunTag

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(summary[k]), now, 0) for k in SUMMARY_METRICS if _number(summary.get(k))]
        tags = {k: _tag(summary.get(k)) for k in SUMMARY_TAGS if k in summary}
        tags.update({f"versions.{k}": str(v) for k, v in (summary.get("versions") or {}).items()})
        tags["lr_reductions"] = ", ".join(f"{r['epoch']} -> {r['lr']}" for r in summary.get("lr_reductions", [])) \
            or "none"
        if summary.get("git_commit"):
            tags["mlflow.source.git.commit"] = summary["git_commit"].removesuffix("-dirty")
        self.client.log_batch(run_id, metrics=metrics, tags=[RunTag(k, v) for k, v in tags.items()])

    def _log_model(self, model_file: Path, shapes: tuple[tuple[int, ...], int]) -> None:
        """model.keras as an MLflow pyfunc model (service/mlflow_model.py); TensorFlow stays out of
        the driver: the model is only loaded where someone loads it back."""
        import mlflow
        import numpy as np
        from mlflow.models import ModelSignature
        from mlflow.types import Schema, TensorSpec

        from service import provenance

        requirements = self.engine.requirements(provenance.versions(dict(self.engine.versions)))
        features, classes = shapes
        signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype("float32"), (-1, *features))]),
                                   outputs=Schema([TensorSpec(np.dtype("float32"), (-1, classes))]))
        # The fluent API's store is this run's. set_tracking_uri also exports MLFLOW_TRACKING_URI
        # (for MLflow's subprocesses): put the variable back, or every later command of this
        # process, and every process it starts, would be tracked there too.
        before = os.environ.get(compat_mlflow.TRACKING_URI_VAR)
        mlflow.set_tracking_uri(self.tracking.mlflow)
        try:
            with mlflow.start_run(run_id=self.run_id):
                info = mlflow.pyfunc.log_model(
                    name=MODEL_NAME, python_model=str(MODEL_CODE), signature=signature,
                    artifacts={KERAS_ARTIFACT: str(model_file)},
                    pip_requirements=requirements)
        finally:
            mlflow.set_tracking_uri(before)
        self.client.set_tag(self.run_id, "model_uri", info.model_uri)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _tag(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


# ---------------------------------------------------------------------------------------------
# A study


class StudyTracker(_Tracker):
    """A study as a parent MLflow run, each trial a nested run logged once it ended."""

    parent_id: Optional[str] = None

    def _start(self, spec: CompareSpec) -> None:
        run = self._begin(spec.name, "compare")
        self.parent_id = run.info.run_id
        self.ids.setdefault("trials", {})
        self._write_ids()
        self._log_params(self.parent_id, flat_params(spec.model_dump(mode="json")), run.data.params)

    def trial(self, name: str, setting_values: dict, seed: int, spec: TrainSpec, outcome: Any) -> None:
        """One ended trial as a nested run (once: a resumed study skips the trials it logged)."""
        if self.enabled and self.parent_id and name not in self.ids["trials"]:
            self.safely(self._trial, name, setting_values, seed, spec, outcome)

    def _trial(self, name: str, setting_values: dict, seed: int, spec: TrainSpec, outcome: Any) -> None:
        from mlflow.entities import Metric

        run = self._open_run(name, {"plateau.kind": "trial"}, parent=self.parent_id)
        run_id = run.info.run_id
        params = {**flat_params(spec.model_dump(mode="json")), "seed": str(seed),
                  **{f"grid.{k}": _tag(v) for k, v in setting_values.items()}}
        self._log_params(run_id, params, {})
        metrics = [Metric(k, float(row[k]), int(time.time() * 1000), row["epoch"])
                   for row in outcome.history for k in EPOCH_METRICS if row.get(k) is not None]
        for start in range(0, len(metrics), 1000):  # MLflow's most metrics per log_batch call
            self.client.log_batch(run_id, metrics=metrics[start:start + 1000])
        if outcome.summary:
            self._log_summary(run_id, outcome.summary)
        if outcome.error:
            self.client.set_tag(run_id, "error", one_line(outcome.error, 5000))
        self._log_files(run_id, Path(spec.output) / name, RUN_FILES)
        self.client.set_terminated(run_id, "FINISHED" if outcome.status == "ok" else "FAILED")
        self.ids["trials"][name] = run_id
        self._write_ids()

    _log_summary = RunTracker._log_summary

    def finish(self, settings: list, status: str) -> None:
        """The comparison files and each setting's statistics (settings.csv) on the parent run."""
        if self.enabled and self.parent_id:
            self.safely(self._finish, settings, status)

    def end(self, status: str) -> None:
        """Only the parent run's end (Ctrl-C: the same command logs the rest)."""
        if self.enabled and self.parent_id:
            self.safely(self.client.set_terminated, self.parent_id, status)

    def _finish(self, settings: list, status: str) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = []
        path = self.folder / "settings.csv"
        rows = list(csv.DictReader(path.open())) if path.is_file() else []
        slugs = {s.label: s.slug for s in settings}
        for row in rows:
            slug = slugs.get(row["setting"], row["setting"])
            metrics += [Metric(f"{slug}/{k}", _csv_number(row[k]), now, 0) for k in SETTINGS_METRICS
                        if row.get(k) not in (None, "") and _csv_number(row[k]) is not None]
        for start in range(0, len(metrics), 1000):
            self.client.log_batch(self.parent_id, metrics=metrics[start:start + 1000])
        self._log_files(self.parent_id, self.folder, STUDY_FILES)
        self.client.set_terminated(self.parent_id, status)


def _csv_number(text: str) -> Optional[float]:
    if text in ("True", "False"):
        return float(text == "True")
    try:
        return float(text)
    except ValueError:
        return None
