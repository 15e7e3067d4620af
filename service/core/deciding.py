"""How every rank decides, whatever the engine: global metrics, the stock deciders made resumable,
consensus and the decision record. Numpy only: no TensorFlow, no Keras here.

Each engine declares its callbacks as one of these classes on its Keras's own `Callback` (or stock
callback) class, e.g. tf_keras's in `service/engines/tf_keras/callbacks.py`::

    class GlobalMetrics(deciding.GlobalMetrics, tf_keras.callbacks.Callback): ...
    class ResumableEarlyStopping(deciding.ResumableEarlyStopping, tf_keras.callbacks.EarlyStopping): ...

and builds its stack with `build`, so the arithmetic, the stop reasons and the records are written
once (why each exists: `service/engines/tf_keras/callbacks.py`). What an engine gives them: a collective (`all_gather` of
small float64 vectors in rank order, `world_size`), a shard evaluator (`sums()`: loss sum, correct
count, example count), and how its optimizer's learning rate is read and set (`Consensus.read_lr`,
`Consensus.write_lr`).

Example::

    deciders = build(spec, collective, rank, val, saved_state, TF_KERAS)
    deciders.as_list()    # [GlobalMetrics, ReduceLROnPlateau, EarlyStopping, Consensus]
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, Optional

import numpy as np

from service.spec import METRICS, TrainSpec
from service.stopreason import StopReason


class LocalCollective:
    """The all-gather of one process: its own row (one worker, or rank-local metrics)."""

    world_size = 1

    def all_gather(self, values: Any) -> np.ndarray:
        return np.asarray(values, dtype=np.float64).reshape(1, -1)

    def sum(self, values: Any) -> np.ndarray:
        return self.all_gather(values).sum(axis=0)


def global_metrics(collective: Any, evaluator: Any) -> dict[str, float]:
    """Exact loss and accuracy over the whole split: sums over ranks / examples over ranks."""
    loss_sum, correct, count = collective.sum(evaluator.sums())
    if count == 0:
        return {"loss": float("nan"), "accuracy": float("nan")}
    return {"loss": loss_sum / count, "accuracy": correct / count}


# ---------------------------------------------------------------------------------------------
# Global metrics


class GlobalMetrics:
    """Makes `logs` hold the job's metrics, not this rank's, before any decision reads them.

    Place it first in the callback list. It sets `val_loss` and `val_accuracy` from the
    global validation sums, and averages the training `loss` and `accuracy` over ranks (every
    rank runs the same number of equal-sized steps, so the plain mean is the global one). It
    also times each epoch.

    A metric that is NaN or infinite (training diverged) stops the run at this epoch: every rank
    sees the same global numbers, so every rank stops here. `non_finite` names the first such
    metric (None when all are finite).
    """

    def __init__(self, collective: Any, val: Any):
        super().__init__()
        self.collective = collective
        self.val = val
        self.seconds = 0.0
        self._start = 0.0
        self.non_finite: Optional[str] = None

    def on_epoch_begin(self, epoch: int, logs: dict | None = None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None):
        logs = logs if logs is not None else {}
        # One exchange per epoch: [val loss sum, val correct, val count, train loss, train acc].
        rows = self.collective.all_gather([*self.val.sums(), logs.get("loss", np.nan), logs.get("accuracy", np.nan)])
        loss_sum, correct, count = rows[:, :3].sum(axis=0)
        logs["loss"], logs["accuracy"] = (float(v) for v in rows[:, 3:].mean(axis=0))
        logs["val_loss"] = float(loss_sum / count)
        logs["val_accuracy"] = float(correct / count)
        self.seconds = time.perf_counter() - self._start
        self.non_finite = next((k for k in METRICS if not math.isfinite(logs.get(k, 0.0))), None)
        if self.non_finite is not None:
            self.model.stop_training = True


# ---------------------------------------------------------------------------------------------
# The stock deciders, resumable


class Resumable:
    """State a callback carries from epoch to epoch, saved and restored by name.

    Keras resets ReduceLROnPlateau and EarlyStopping in `on_train_begin`, so a run resumed from a
    checkpoint would forget its best value, its waits and its cooldown, and decide differently
    from the run that never stopped. State loaded before `fit` is applied right after that reset.
    """

    state_fields: tuple[str, ...] = ()
    _resume: Optional[dict[str, Any]] = None

    def state_dict(self) -> dict[str, Any]:
        # numpy scalars as plain numbers, so the state can go into JSON as it is
        return {name: _plain(getattr(self, name)) for name in self.state_fields}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._resume = {name: state[name] for name in self.state_fields if name in state}

    def on_train_begin(self, logs: dict | None = None):
        super().on_train_begin(logs)  # Keras's fresh-start reset
        for name, value in (self._resume or {}).items():
            setattr(self, name, value)


class ResumableReduceLROnPlateau(Resumable):
    """Stock `ReduceLROnPlateau` whose `best`, `wait` and `cooldown_counter` survive a restart."""

    state_fields = ("best", "wait", "cooldown_counter")


class ResumableEarlyStopping(Resumable):
    """Stock `EarlyStopping` whose `best`, `wait`, `best_epoch`, `stopped_epoch` and best
    weights survive a restart, and that says why it stopped (`stop_reason`, also kept).

    Stock EarlyStopping resets `wait` only when the value improves on its best AND beats
    `baseline`, and stops once `wait` reaches `patience`. The stop is `baseline`'s doing when
    the value did improve within the last `patience` epochs (without a baseline it would have
    gone on), else `patience`'s: no improvement for `patience` epochs.
    """

    state_fields = ("best", "wait", "best_epoch", "stopped_epoch", "best_weights", "stop_reason")
    stop_reason = None

    def on_train_begin(self, logs: dict | None = None):
        self.stop_reason = None
        super().on_train_begin(logs)  # Keras's reset, then the saved state (its reason included)

    def on_epoch_end(self, epoch: int, logs: dict | None = None):
        before = self.stopped_epoch
        super().on_epoch_end(epoch, logs)
        if self.stopped_epoch != before:  # it decided to stop at this epoch
            recent = epoch - self.best_epoch < self.patience
            self.stop_reason = StopReason.BASELINE if self.baseline is not None and recent else StopReason.PATIENCE


def _plain(value: Any):
    return value.item() if isinstance(value, np.generic) else value


def _number(value: Any) -> Optional[float]:
    """A decider's `best` as a float; None before a first value (Keras 3 starts it at None)."""
    return None if value is None else float(value)


# ---------------------------------------------------------------------------------------------
# Consensus and the decision trace


@dataclasses.dataclass
class Decision:
    """What one rank's callbacks saw and did at the end of one epoch (one decisions.jsonl row)."""

    epoch: int  # 1-based, as Keras prints
    rank: int
    world_size: int  # how many workers trained this epoch (an elastic run's changes over time)
    values: dict[str, float]
    lr_before: float
    lr_after: float
    reduced: bool
    stop: bool
    plateau_wait: Optional[int]
    stopping_wait: Optional[int]
    # This rank's own proposal before consensus: differs from the outcome only when ranks
    # disagreed, which global metrics prevent.
    would_stop: bool = False
    proposed_lr: float = 0.0
    # Why the run ends at this epoch (None while it goes on): max_epochs, patience, baseline,
    # non_finite, or consensus (another rank decided it).
    stop_reason: Optional[StopReason] = None
    # The replica check (`replicas.ReplicaCheck`): True when every rank's weights, optimizer
    # state and learning rate were bit-identical after this epoch; None when it did not run.
    replicas_identical: Optional[bool] = None
    # The stock deciders' own state after this epoch, so that `plateau show` (service/explain.py)
    # reads what they decided instead of redoing their arithmetic: ReduceLROnPlateau's best and
    # cooldown_counter, EarlyStopping's best (inf, null in a file, before a first value).
    plateau_best: Optional[float] = None
    plateau_cooldown: Optional[int] = None
    stopping_best: Optional[float] = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Consensus:
    """Every rank applies the same learning rate and stops at the same epoch; records why.

    Place it after ReduceLROnPlateau and EarlyStopping. At each epoch's end it gathers every
    rank's (stop flag, learning rate): any stop -> all stop; the learning rate becomes the
    lowest proposed. With global metrics the ranks already agree, so this changes nothing in a
    correct run; it turns any disagreement (a rank-local decision) into a safe, recorded one
    instead of a hang or silently diverging weights.

    An engine's class says how its optimizer's rate is read (`read_lr`, as a float32's shortest
    repr: 0.01, not 0.0099999998) and set (`write_lr`).
    """

    read_lr: Callable[[Any], float]
    write_lr: Callable[[Any, float], None]

    def __init__(self, collective: Any, rank: int, reduce_lr: Any = None, early_stopping: Any = None,
                 metrics: Optional[GlobalMetrics] = None):
        super().__init__()
        self.collective = collective
        self.rank = rank
        self.reduce_lr = reduce_lr
        self.early_stopping = early_stopping
        self.metrics = metrics
        self.last: Optional[Decision] = None
        self._lr_before = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None):
        self._lr_before = self.read_lr(self.model)

    def on_epoch_end(self, epoch: int, logs: dict | None = None):
        logs = logs if logs is not None else {}
        wants_stop = bool(self.model.stop_training)
        proposed = self.read_lr(self.model)
        views = self.collective.all_gather([float(wants_stop), proposed])
        stop = bool(views[:, 0].max() > 0)
        lr = float(views[:, 1].min())
        if lr != proposed:
            self.write_lr(self.model, lr)
        self.model.stop_training = stop
        if stop and self.early_stopping is not None and not self.early_stopping.stopped_epoch:
            # Another rank stopped: keep EarlyStopping's bookkeeping (and best-weight restore)
            # as if this rank had decided it too.
            self.early_stopping.stopped_epoch = epoch
        lr_after = self.read_lr(self.model)
        self.last = Decision(
            epoch=epoch + 1,
            rank=self.rank,
            world_size=self.collective.world_size,
            values={k: float(logs[k]) for k in METRICS if k in logs},
            lr_before=self._lr_before,
            lr_after=lr_after,
            reduced=lr_after < self._lr_before,
            stop=stop,
            plateau_wait=None if self.reduce_lr is None else int(self.reduce_lr.wait),
            stopping_wait=None if self.early_stopping is None else int(self.early_stopping.wait),
            would_stop=wants_stop,
            proposed_lr=proposed,
            stop_reason=self._stop_reason(epoch, wants_stop, stop),
            plateau_best=None if self.reduce_lr is None else _number(self.reduce_lr.best),
            plateau_cooldown=None if self.reduce_lr is None else int(self.reduce_lr.cooldown_counter),
            stopping_best=None if self.early_stopping is None else _number(self.early_stopping.best),
        )

    def _stop_reason(self, epoch: int, wants_stop: bool, stop: bool) -> Optional[StopReason]:
        """Whose decision ends the run here: this rank's own deciders', another rank's
        (consensus), or none but the last epoch (max_epochs)."""
        if not stop:
            epochs = (getattr(self, "params", None) or {}).get("epochs", math.inf)
            return StopReason.MAX_EPOCHS if epoch + 1 >= epochs else None
        if not wants_stop:
            return StopReason.CONSENSUS
        if self.metrics is not None and self.metrics.non_finite is not None:
            return StopReason.NON_FINITE
        return getattr(self.early_stopping, "stop_reason", None) or StopReason.CONSENSUS


# ---------------------------------------------------------------------------------------------
# The whole stack, in order


@dataclasses.dataclass
class DecisionCallbacks:
    """The callbacks that decide, in the order Keras must run them."""

    metrics: GlobalMetrics
    reduce_lr: Optional[ResumableReduceLROnPlateau]
    early_stopping: Optional[ResumableEarlyStopping]
    consensus: Consensus

    def as_list(self) -> list:
        order = [self.metrics, self.reduce_lr, self.early_stopping, self.consensus]
        return [cb for cb in order if cb is not None]

    def state_dicts(self) -> dict[str, dict[str, Any]]:
        """The deciders' state by spec section name, for a checkpoint."""
        deciders = {"reduce_lr": self.reduce_lr, "early_stopping": self.early_stopping}
        return {name: cb.state_dict() for name, cb in deciders.items() if cb is not None}


@dataclasses.dataclass(frozen=True)
class Kinds:
    """An engine's concrete classes of the stack, and whether its stock deciders get `mode: auto`
    as written (tf_keras reads it from the monitor's name) or resolved to min/max first (Keras 3
    reads it from the compiled metrics, which a custom training loop never builds)."""

    metrics: type
    reduce_lr: type
    early_stopping: type
    consensus: type
    resolve_auto_mode: bool = False

    def arguments(self, section: Any) -> dict[str, Any]:
        """The stock callback's arguments: the spec section's fields (mode resolved if need be)."""
        args = section.model_dump()
        if self.resolve_auto_mode and args["mode"] == "auto":
            args["mode"] = "max" if section.higher_is_better else "min"
        return args


def build(spec: TrainSpec, collective: Any, rank: int, val: Any, state: Optional[dict[str, dict[str, Any]]],
          kinds: Kinds) -> DecisionCallbacks:
    """Global metrics -> stock ReduceLROnPlateau / EarlyStopping -> consensus, for `spec`.

    `state` (from a checkpoint: `DecisionCallbacks.state_dicts()` of the run that stopped)
    replaces Keras's fresh-start reset.
    """
    state = state or {}
    reduce_lr = early_stopping = None
    if spec.reduce_lr is not None:
        reduce_lr = kinds.reduce_lr(**kinds.arguments(spec.reduce_lr))
        reduce_lr.load_state_dict(state.get("reduce_lr", {}))
    if spec.early_stopping is not None:
        early_stopping = kinds.early_stopping(**kinds.arguments(spec.early_stopping))
        early_stopping.load_state_dict(state.get("early_stopping", {}))
    # The rank-local mode exists to show what consensus guards against; never the default.
    metrics_collective = LocalCollective() if spec.debug.rank_local_metrics else collective
    metrics = kinds.metrics(metrics_collective, val)
    return DecisionCallbacks(
        metrics=metrics,
        reduce_lr=reduce_lr,
        early_stopping=early_stopping,
        consensus=kinds.consensus(collective, rank, reduce_lr, early_stopping, metrics=metrics),
    )
