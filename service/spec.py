"""Job specs: what a user writes in YAML, validated before anything starts.

A spec is data. `load_spec(path, overrides)` reads a YAML file, applies `--set key.sub=value`
overrides, translates legacy names, and returns a validated `TrainSpec` or `CompareSpec`.
Every problem becomes one `SpecError` line that names the field and says how to fix it.

Example::

    spec = load_spec("jobs/seed-reduce-lr.yaml", ["training.epochs=3", "reduce_lr=null"])
    spec.reduce_lr is None   # True
"""

from __future__ import annotations

import copy
import difflib
import warnings
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional, Union

import yaml
from pydantic import (BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator,
                      model_validator)

from service import usermodel
from service.errors import BadInput

# The metrics the seed's model produces, in the order files and lines show them; a callback
# can only monitor one of these.
METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")
# The classes of the built-in model (the seed's MNIST digits).
SEED_CLASSES = 10


class SpecError(BadInput):
    """A spec problem, as one line a user can act on."""


class SpecWarning(UserWarning):
    """A spec that works but uses a legacy name (shown to the user once, in one line)."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _legacy_name(data: Any, old: str, new: str, section: str, why: str = "") -> Any:
    """Read a field's legacy name `old` as `new`, with a one-line warning; both at once is an error."""
    if not (isinstance(data, dict) and old in data):
        return data
    data = dict(data)
    if new in data:
        raise ValueError(f"give either {old} or {new}, not both ({old} is the legacy name)")
    warnings.warn(f"{section}.{old} is deprecated; {why or f'use {section}.{new}'}", SpecWarning, stacklevel=3)
    data[new] = data.pop(old)
    return data


class DataSpec(_Section):
    # auto | mnist | sample | path to a Keras-layout .npz | Parquet directory or URI
    source: str = "auto"
    # holdout: the last sixth of the training images; test: validate on the test set (the seed)
    validation: Literal["holdout", "test"] = "holdout"
    # K, the number of classes: labels are 0..K-1 (null: the largest label + 1, at least 2).
    classes: Optional[int] = Field(None, ge=2)
    # Parquet: the columns of the features (a list of numbers, or bytes, per row) and of the labels.
    features: str = Field("image", min_length=1)
    labels: str = Field("label", min_length=1)
    # With model.build: each row's features reshaped to this (e.g. [28, 28, 1]); null keeps the source's.
    shape: Optional[list[int]] = None

    @field_validator("shape")
    @classmethod
    def _positive_sizes(cls, value: Optional[list[int]]) -> Optional[list[int]]:
        if value is not None and (not value or any(size < 1 for size in value)):
            raise ValueError("give every size of a row's shape as a number >= 1, e.g. [28, 28, 1]")
        return value


class ModelSpec(_Section):
    # Your model: "module:function" or "file.py:function" (service/usermodel.py, docs/your-model.md);
    # null: the seed's MLP. Stored resolved: a file as an absolute path.
    build: Optional[str] = None
    # Keyword arguments of the builder: build(input_shape, classes, **kwargs).
    kwargs: dict[str, Any] = Field(default_factory=dict)
    # The seed's MLP only (lint warns when they are set beside build).
    hidden_units: int = Field(784, ge=1)
    dropout: float = Field(0.5, ge=0.0, lt=1.0)
    learning_rate: float = Field(0.01, gt=0.0)

    @field_validator("build")
    @classmethod
    def _builder_form(cls, value: Optional[str]) -> Optional[str]:
        if value is not None:
            usermodel.parse(value)  # BuilderError is a ValueError: one line, under model.build
        return value

    @field_validator("kwargs")
    @classmethod
    def _keyword_names(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in value:
            if not str(key).isidentifier():
                raise ValueError(f"{key!r} is not a Python name, so the builder cannot take it as a keyword")
            if key in usermodel.RESERVED_KWARGS:
                raise ValueError(f"{key} is what plateau passes the builder itself; rename that keyword")
        return value

    @model_validator(mode="before")
    @classmethod
    def _legacy_lr(cls, data: Any) -> Any:
        return _legacy_name(data, "lr", "learning_rate", "model")

    def weight_shapes(self) -> dict[str, tuple[int, ...]]:
        """The seed network's weights (784 -> hidden_units -> 10) by their names in a checkpoint,
        for the driver, which does not build the model: a run resumes only from a checkpoint of
        these shapes. `{"0.dense/kernel": (784, 128), "0.dense/bias": (128,), ...}`; nothing for a
        model of your own, whose shapes only its builder knows (each checkpoint's manifest still holds)."""
        if self.build is not None:
            return {}
        hidden = self.hidden_units
        return {"0.dense/kernel": (784, hidden), "0.dense/bias": (hidden,),
                "2.dense/kernel": (hidden, 10), "2.dense/bias": (10,)}


class TrainingSpec(_Section):
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(200, ge=1)  # the global batch: each worker takes batch_size / workers
    seed: int = 7
    # Steps a worker runs per call into TensorFlow. Above 1 it removes Keras's per-step Python
    # overhead (measured: 2 workers ~24% faster at 50) without changing what is computed: same
    # batches, same order, dropout keyed on the optimizer step, callbacks act at epoch ends.
    steps_per_execution: int = Field(50, ge=1)
    # What trains in the workers (service/engines/): tf_keras 2.21 under MultiWorkerMirroredStrategy, or
    # Keras 3 on JAX (the `jax` extra). Part of the run's identity: a run resumes on the engine it started on.
    engine: Literal["tf_keras", "keras_jax"] = "tf_keras"


class ScalingSpec(_Section):
    # A number of workers (0 = Ray Train's in-process local mode), or [MIN, MAX]: an elastic run
    # that starts with as many as the cluster can place, goes on with fewer when a node is lost
    # and grows back when capacity returns.
    num_workers: Union[int, tuple[int, int]] = 2
    # Elastic runs: how often Ray Train looks for room to grow. Ray's default, 60 s, left a node
    # that came back unused for the 130 s a run had left; every look is one query of the cluster.
    resize_interval_s: float = Field(10.0, ge=0)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    # Only read when use_gpu; a whole number: two ranks on one GPU is what NCCL refuses ("Duplicate GPU
    # detected"), and keras_jax has no other collective between GPUs, so a fraction is refused.
    gpus_per_worker: float = Field(1.0, ge=0)
    # How gradients are all-reduced between workers: NCCL between GPUs, gRPC RING between CPU
    # processes; auto picks NCCL with use_gpu and RING otherwise.
    collective: Literal["auto", "ring", "nccl"] = "auto"
    # Where Ray places the workers: PACK fills a node first, SPREAD prefers distinct nodes,
    # STRICT_SPREAD requires one node per worker.
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_SPREAD"] = "PACK"
    # On a cluster that may still add nodes: how long to wait for the workers' resources.
    resources_timeout_s: float = Field(600.0, gt=0)
    # Restart the worker group this many times after a worker dies (-1 = forever).
    max_failures: int = Field(0, ge=-1)
    # Where Ray Train keeps checkpoints: a local path, or a URI on shared storage for clusters.
    storage_path: Optional[str] = None
    # True when storage_path is a directory every node mounts (NFS, EFS): checkpoints written
    # there are shared although the path looks like a local one.
    storage_shared: bool = False

    @field_validator("num_workers")
    @classmethod
    def _worker_counts(cls, value: Any):
        if isinstance(value, int):
            if value < 0:
                raise ValueError("give a number of workers >= 0 (0 = in-process local mode), or [MIN, MAX]")
            return value
        low, high = value
        if not 1 <= low <= high:
            raise ValueError(f"[MIN, MAX] needs 1 <= MIN <= MAX; got [{low}, {high}]")
        return value

    @property
    def elastic(self) -> bool:
        return isinstance(self.num_workers, tuple)

    @property
    def min_workers(self) -> int:
        """The fewest processes that train: local mode (0) still trains in one."""
        return self.num_workers[0] if self.elastic else max(self.num_workers, 1)

    @property
    def max_workers(self) -> int:
        return self.num_workers[1] if self.elastic else max(self.num_workers, 1)

    @model_validator(mode="after")
    def _nccl_needs_gpus(self) -> "ScalingSpec":
        if self.collective == "nccl" and not self.use_gpu:
            raise ValueError("collective nccl runs between GPUs; set use_gpu: true (or --gpu), or use ring")
        if self.use_gpu and self.gpus_per_worker == 0:
            raise ValueError("use_gpu with gpus_per_worker 0 gives the workers no GPU; use 1")
        if self.use_gpu and self.gpus_per_worker != int(self.gpus_per_worker):
            raise ValueError(f"gpus_per_worker {self.gpus_per_worker:g} would put two workers on one GPU, which "
                             "NCCL refuses (and keras_jax has no other collective between GPUs); give each worker "
                             "a whole GPU (gpus_per_worker: 1) and as many workers as there are GPUs "
                             "(--workers N), or train on CPUs without --gpu")
        return self

    @property
    def resources_per_worker(self) -> dict[str, float]:
        """What one worker asks Ray for."""
        return {"CPU": self.cpus_per_worker, **({"GPU": self.gpus_per_worker} if self.use_gpu else {})}


def higher_is_better(monitor: str, mode: str = "auto", auto_rule: str = "ReduceLROnPlateau") -> bool:
    """Whether a larger `monitor` is an improvement, as the tf_keras 2.21 callback `auto_rule` decides it.

    `mode` max or min says so. For `mode: auto` the two stock callbacks read the name differently,
    and each decision must be the one its callback takes: ReduceLROnPlateau maximises a monitor whose
    name contains "acc"; EarlyStopping one whose name ends in "acc", "accuracy" or "auc".
    (On the metrics the model produces, `METRICS`, the two rules agree.)
    """
    if mode in ("max", "min"):
        return mode == "max"
    if auto_rule == "EarlyStopping":
        return monitor.endswith(("acc", "accuracy", "auc"))
    return "acc" in monitor


class MonitoredSpec(_Section):
    monitor: str = "val_loss"
    mode: Literal["auto", "min", "max"] = "auto"
    min_delta: float = Field(0.0, ge=0.0)
    patience: int = Field(0, ge=0)

    # Which tf_keras callback's `mode: auto` rule this section follows (`higher_is_better`).
    auto_rule: ClassVar[str] = "ReduceLROnPlateau"

    @property
    def higher_is_better(self) -> bool:
        """Whether this section's callback counts a larger monitor value as an improvement."""
        return higher_is_better(self.monitor, self.mode, self.auto_rule)

    @field_validator("monitor")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        legacy = {"acc": "accuracy", "val_acc": "val_accuracy"}
        value = legacy.get(value, value)
        if value not in METRICS:
            raise ValueError(f"the model does not produce {value!r}; use one of {', '.join(METRICS)}")
        return value


class EarlyStoppingSpec(MonitoredSpec):
    auto_rule: ClassVar[str] = "EarlyStopping"
    baseline: Optional[float] = None
    restore_best_weights: bool = False
    start_from_epoch: int = Field(0, ge=0)


class ReduceLRSpec(MonitoredSpec):
    factor: float = Field(0.1, gt=0.0, lt=1.0)
    patience: int = Field(10, ge=0)
    min_delta: float = Field(1e-4, ge=0.0)
    cooldown: int = Field(0, ge=0)
    min_lr: float = Field(0.0, ge=0.0)

    @model_validator(mode="before")
    @classmethod
    def _legacy_epsilon(cls, data: Any) -> Any:
        # Keras 1/2 called min_delta `epsilon`; the seed uses it. Keras 3 silently ignores it,
        # which would quietly change the experiment, so we translate it loudly instead.
        return _legacy_name(data, "epsilon", "min_delta", "reduce_lr", "it is read as reduce_lr.min_delta")


class CheckpointSpec(_Section):
    # How many epoch checkpoints to keep (null = all). A resume starts from the latest that can
    # be read, so at least 2: a damaged last checkpoint falls back on the one before.
    keep: Optional[int] = 2
    # Which to keep: the most recent, or the best by the monitored metric.
    score: Literal["recency", "monitor"] = "recency"

    @field_validator("keep")
    @classmethod
    def _two_at_least(cls, value: Optional[int]) -> Optional[int]:
        if value is not None and value < 2:
            raise ValueError("keep at least 2, so that a run whose last checkpoint is damaged resumes from the "
                             "one before (null keeps all)")
        return value


class DebugSpec(_Section):
    # Hard-kill one worker process once at the end of this epoch (1-based); for failure drills.
    fail_at_epoch: Optional[int] = Field(None, ge=1)
    fail_rank: int = Field(0, ge=0)
    # Let each rank's callbacks see only its own shard's metrics (what a naive setup does).
    # Only for demonstrating that consensus still keeps the ranks together.
    rank_local_metrics: bool = False
    # Every worker waits this long after each epoch's report: widens the gap between epochs so
    # that a drill (a node lost or added) lands at a known epoch.
    epoch_pause_s: float = Field(0.0, ge=0)
    # The replica check compares every rank's weights, optimizer state and learning rate after
    # every epoch (off: only to measure what it costs). perturb_* nudges one weight of one rank
    # by one ulp at the end of that epoch (1-based), to watch the check fire.
    replica_check: bool = True
    perturb_at_epoch: Optional[int] = Field(None, ge=1)
    perturb_rank: int = Field(0, ge=0)


# What a tracking URI may start with: MLflow's own stores (a folder, file:, SQLAlchemy databases),
# a tracking server, Databricks. Anything else MLflow would refuse only once the run started.
TRACKING_SCHEMES = ("file", "sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks")
TRACKING_EXAMPLES = "a folder (./mlruns), sqlite:///mlflow.db or http://HOST:5000"


class TrackingSpec(_Section):
    """Where the driver logs the run in MLflow (service/tracking.py); not part of a run's identity."""

    # A tracking URI; null: MLflow's own default (MLflow 3: sqlite:///mlflow.db in the working folder).
    mlflow: Optional[str] = None
    experiment: str = Field("plateau", min_length=1)

    @field_validator("mlflow")
    @classmethod
    def _tracking_uri(cls, value: Optional[str]) -> Optional[str]:
        if value is None:
            return value
        value = value.strip()
        scheme, sep, rest = value.partition("://")
        if not sep:  # a folder path (or `databricks`, `file:PATH`)
            head = value.split("/")[0]
            if not value or (":" in head and head.split(":")[0] not in TRACKING_SCHEMES):
                raise ValueError(f"not a tracking URI; use {TRACKING_EXAMPLES}")
            return value
        base = scheme.split("+")[0]  # SQLAlchemy's dialect+driver
        if base not in TRACKING_SCHEMES:
            raise ValueError(f"MLflow has no tracking store for {scheme}://; use {TRACKING_EXAMPLES}")
        if base in ("http", "https") and not rest.split("/")[0]:
            raise ValueError("names no host; use e.g. http://127.0.0.1:5000")
        if base == "sqlite" and not rest.lstrip("/"):
            raise ValueError("names no database file; use e.g. sqlite:///mlflow.db")
        return value


class TrainSpec(_Section):
    kind: Literal["train"] = "train"
    name: str = Field("plateau", min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    output: str = "results"
    data: DataSpec = DataSpec()
    model: ModelSpec = ModelSpec()
    training: TrainingSpec = TrainingSpec()
    scaling: ScalingSpec = ScalingSpec()
    early_stopping: Optional[EarlyStoppingSpec] = None
    reduce_lr: Optional[ReduceLRSpec] = None
    checkpoint: CheckpointSpec = CheckpointSpec()
    debug: DebugSpec = DebugSpec()
    tracking: Optional[TrackingSpec] = None

    @model_validator(mode="after")
    def _consistent(self) -> "TrainSpec":
        workers = self.scaling.max_workers
        # Any split is exact (see worker.py), but every worker needs at least one example per step.
        if self.training.batch_size < workers:
            raise ValueError(
                f"training.batch_size {self.training.batch_size} is smaller than the {workers} workers it is "
                f"split across; use a batch size of at least {workers}"
            )
        least = self.scaling.min_workers  # the ranks every size of the run has
        if self.debug.fail_at_epoch is not None and self.debug.fail_rank >= least:
            raise ValueError(f"debug.fail_rank {self.debug.fail_rank} is not a rank of {least} workers")
        if self.debug.perturb_at_epoch is not None and self.debug.perturb_rank >= least:
            raise ValueError(f"debug.perturb_rank {self.debug.perturb_rank} is not a rank of {least} workers")
        classes = self.data.classes
        if self.model.build is None and classes not in (None, SEED_CLASSES):
            raise ValueError(f"data.classes {classes}: the built-in model has {SEED_CLASSES} classes (labels 0..9); "
                             f"set model.build to train a model of your own on {classes} classes")
        return self

    @property
    def monitored(self) -> Optional[MonitoredSpec]:
        """The section whose metric the run watches (ReduceLROnPlateau's, else EarlyStopping's)."""
        return self.reduce_lr or self.early_stopping

    @property
    def monitor(self) -> Optional[str]:
        """The metric the callbacks watch (ReduceLROnPlateau's, else EarlyStopping's)."""
        return self.monitored.monitor if self.monitored is not None else None

    @property
    def max_workers(self) -> int:
        """The most processes that train (an elastic run's MAX): local mode (0) still trains in one."""
        return self.scaling.max_workers


class SequentialSeeds(_Section):
    """`seeds: {start: 3, max: 10}`: add seeds one round at a time until every setting's interval
    against the baseline excludes zero (see service/compare/seeding.py)."""

    start: int = Field(3, ge=2)   # seeds of the first round
    max: int = Field(10, ge=2)    # seeds at most
    # The fewest seeds a study stops at on resolved intervals (default 6, or max if lower): a
    # bootstrap interval over fewer seeds is too narrow, and below 6 no exact test reaches p < 0.05.
    min: Optional[int] = Field(None, ge=2)
    first: Optional[int] = None   # the first seed (default: the base's training.seed); then the next integers

    @model_validator(mode="after")
    def _ordered(self) -> "SequentialSeeds":
        if self.max < self.start:
            raise ValueError(f"max {self.max} is below start {self.start}")
        if self.min is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}: the study could never stop early")
        return self

    @property
    def min_to_stop(self) -> int:
        """Seeds needed before a stop on resolved intervals."""
        return self.min if self.min is not None else min(6, self.max)


class CompareSpec(_Section):
    kind: Literal["compare"] = "compare"
    name: str = Field("compare", min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    output: str = "results"
    base: Union[TrainSpec, str]
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    # A list: every setting runs once per seed. A mapping: sequential seeding (SequentialSeeds).
    seeds: Union[list[int], SequentialSeeds] = Field(default_factory=lambda: [7])

    @field_validator("seeds", mode="before")
    @classmethod
    def _seed_plan(cls, value: Any):
        """A mapping is a SequentialSeeds (its errors in one line); a list needs a seed."""
        if isinstance(value, list) and not value:
            raise ValueError("give at least one seed, e.g. [7, 8, 9], or {start: 3, max: 10}")
        if not isinstance(value, dict):
            return value
        try:
            return SequentialSeeds.model_validate(value)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise ValueError(f"{where + ': ' if where else ''}{err['msg'].removeprefix('Value error, ')}") from None
    # How the trials run (compare/plan.py): "auto" plans them from what Ray reports (on CPUs one
    # worker per trial, as many trials at once as the CPUs hold); a number fixes it. The worker
    # count changes a run only by the order its gradients are summed in; every trial gets the same.
    max_concurrent_trials: Union[Literal["auto"], int] = "auto"
    workers_per_trial: Union[Literal["auto"], int] = "auto"
    scheduler: Optional[Literal["asha"]] = None
    # The study's MLflow tracking: a parent run with every trial nested under it. A base's
    # `tracking` moves here (its fields under this one's): the study's driver logs every trial.
    tracking: Optional[TrackingSpec] = None

    @model_validator(mode="after")
    def _tracking_from_base(self) -> "CompareSpec":
        if isinstance(self.base, TrainSpec) and self.base.tracking is not None:
            mine = self.tracking.model_dump(exclude_unset=True) if self.tracking else {}
            merged = self.base.tracking.model_copy(update=mine)
            base = self.base.model_copy(update={"tracking": None})
            # Straight into __dict__: assignment would validate again, and re-enter this validator.
            self.__dict__.update(tracking=merged, base=base)
        return self

    @field_validator("max_concurrent_trials", "workers_per_trial", mode="before")
    @classmethod
    def _auto_or_count(cls, value: Any, info: ValidationInfo):
        least = 1  # a trial cannot train in local mode (0 workers): it runs inside a Tune trial
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= least):
            return value
        raise ValueError(f"use auto or a whole number >= {least}")


def inline_compare_base(data: dict, base_dir: Path | None) -> dict:
    """A compare spec whose `base` is a path -> the same spec with the base file's mapping.

    The path is read relative to the compare spec's folder (`base_dir`), else to the working
    directory. Anything that is not a compare spec with a string base is returned unchanged.
    """
    if not isinstance(data, dict) or data.get("kind") != "compare" or not isinstance(data.get("base"), str):
        return data
    data = dict(data)
    base_path = Path(data["base"])
    if not base_path.is_absolute() and base_dir is not None and (base_dir / base_path).is_file():
        base_path = base_dir / base_path
    data["base"] = resolve_builders(read_yaml(base_path), base_path.parent)
    return data


Spec = Union[TrainSpec, CompareSpec]
BUILD_KEY = "model.build"


def resolve_builders(data: Any, base_dir: Path | None, where: str = "") -> Any:
    """`data` with every relative `model.build` file made absolute, read from `base_dir` (None: the
    current directory): a train spec's, a compare spec's base's, and the values a grid gives it.

    Example::

        resolve_builders({"model": {"build": "cnn.py:build"}}, Path("examples"))
        # {'model': {'build': '/.../examples/cnn.py:build'}}
    """
    if not isinstance(data, dict):
        return data
    data = copy.deepcopy(data)

    def absolute(section: Any, field: str) -> None:
        if isinstance(section, dict) and isinstance(section.get("build"), str):
            try:
                section["build"] = str(usermodel.resolve(section["build"], base_dir))
            except usermodel.BuilderError as exc:
                raise SpecError(f"{where}{field}: {exc}") from None

    absolute(data.get("model"), BUILD_KEY)
    if data.get("kind") == "compare":
        if isinstance(data.get("base"), dict):
            absolute(data["base"].get("model"), f"base.{BUILD_KEY}")
        grid = data.get("grid") if isinstance(data.get("grid"), dict) else {}
        for axis, values in grid.items():
            for value in values if isinstance(values, list) else []:
                if axis == BUILD_KEY and isinstance(value, str):
                    holder = {"build": value}
                    absolute(holder, f"grid {axis}")
                    values[values.index(value)] = holder["build"]
                elif axis == "model":
                    absolute(value, f"grid {axis}")
    return data


# ---------------------------------------------------------------------------------------------
# Loading and overrides


def parse_override(text: str) -> tuple[str, Any]:
    """`key.sub=value` -> ("key.sub", value); the value is read as YAML (3, 0.1, null, true)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise SpecError(f"--set {text!r}: expected KEY=VALUE, e.g. --set reduce_lr.patience=2")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def set_path(data: dict, dotted: str, value: Any) -> None:
    """Set `a.b.c` in a nested dict, creating sections as needed."""
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def apply_overrides(data: dict, overrides: list[str] | None) -> dict:
    data = copy.deepcopy(data)
    for text in overrides or []:
        key, value = parse_override(text)
        set_path(data, key, value)
    return data


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"spec file {str(path)!r} not found; pass a YAML spec such as jobs/seed-reduce-lr.yaml")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise SpecError(f"{path}: not valid YAML{where}; check indentation and quoting") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(f"{path}: a spec is a YAML mapping (key: value), not a {type(data).__name__}")
    return data


def _fields_of(model: type[BaseModel], loc: tuple) -> list[str]:
    """The field names valid at `loc` (for 'did you mean')."""
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return []
        annotation = field.annotation
        candidates = [a for a in getattr(annotation, "__args__", (annotation,)) if isinstance(a, type)]
        nested = [a for a in candidates if issubclass(a, BaseModel)]
        if not nested:
            return []
        model = nested[0]
    return list(model.model_fields)


def _lines(exc: ValidationError, model: type[BaseModel], where: str) -> str:
    """Every error of a validation, one line each (in the order of the spec's fields)."""
    errors = exc.errors()
    # `base: Union[TrainSpec, str]`: a mapping that fails as a TrainSpec also "fails" as a string;
    # that second branch says nothing the first did not.
    errors = [e for e in errors if not (e["loc"][:2] == ("base", "str") and e["type"] == "string_type"
                                        and len(errors) > 1)]
    return "\n".join(dict.fromkeys(_one_line(err, model, where) for err in errors))


def _one_line(err: dict, model: type[BaseModel], where: str) -> str:
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    field = ".".join(str(p) for p in loc) or "spec"
    if err["type"] == "extra_forbidden":
        known = _fields_of(model, loc[:-1])
        guess = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f"did you mean {guess[0]!r}?" if guess else f"known fields: {', '.join(known)}"
        return f"{where}{field}: unknown field; {hint}"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "literal_error":
        msg = msg.replace("Input should be", "use")
    return f"{where}{field}: {msg} (got {err.get('input')!r})" if "input" in err and not isinstance(
        err.get("input"), dict
    ) else f"{where}{field}: {msg}"


def validate_train(data: dict, where: str = "") -> TrainSpec:
    try:
        return TrainSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(_lines(exc, TrainSpec, where)) from None


def validate(data: dict, where: str = "", base_dir: Path | None = None) -> Spec:
    """A raw dict -> TrainSpec or CompareSpec, dispatching on `kind`."""
    kind = data.get("kind", "train")
    if kind == "train":
        return validate_train(data, where)
    if kind == "compare":
        data = inline_compare_base(data, base_dir)
        try:
            return CompareSpec.model_validate(data)
        except ValidationError as exc:
            raise SpecError(_lines(exc, CompareSpec, where)) from None
    raise SpecError(f"{where}kind: unknown kind {kind!r}; use 'train' or 'compare'")


WORKERS_KEY = "scaling.num_workers"


def route_overrides(data: dict, overrides: list[str] | None) -> list[str]:
    """Overrides as they apply to the spec `data`: for a compare spec, a key that is not one of
    the study's own fields (name, output, grid, seeds, ...) belongs to its base train spec, so
    `training.epochs=2` (or `--epochs 2`) becomes `base.training.epochs=2`; the worker count
    (`--workers N`) becomes the study's `workers_per_trial`."""
    if not isinstance(data, dict) or data.get("kind") != "compare":
        return list(overrides or [])
    routed = []
    for text in overrides or []:
        key, _ = parse_override(text)
        if key == WORKERS_KEY:  # `--workers N` on a study fixes every trial's workers
            routed.append(f"workers_per_trial={text.partition('=')[2]}")
            continue
        routed.append(text if key.split(".")[0] in CompareSpec.model_fields else f"base.{text.lstrip()}")
    return routed


def load_spec(path: str | Path | None, overrides: list[str] | None = None) -> Spec:
    """Read, override and validate a spec file (None = the default train spec)."""
    data = read_yaml(path) if path is not None else {}
    base_dir = Path(path).parent if path is not None else None
    # A compare spec's base file is read before overrides, so `--set base.x=...` (and the
    # shorthand flags) change the base instead of replacing it with an empty section.
    data = inline_compare_base(data, base_dir)
    where = f"{path}: " if path is not None else ""
    # A builder's file is read from the spec file's folder; one given with --set, like a path on
    # the command line, from the current directory.
    data = resolve_builders(data, base_dir, where)
    data = resolve_builders(apply_overrides(data, route_overrides(data, overrides)), None, where)
    return validate(data, where, base_dir)


def dump_spec(spec: BaseModel) -> str:
    """The resolved spec as YAML, legacy names already translated."""
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
