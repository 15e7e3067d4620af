"""Synchronisation: the callbacks of every rank see the whole job's metrics and take one decision.

In data-parallel training each rank validates on its own shard. If ReduceLROnPlateau or
EarlyStopping decide from that shard alone, ranks disagree: one lowers its learning rate (its
weights drift from the others') or stops (the others wait forever at the next collective, or
at `ray.train.report`, which is a barrier). This module removes that possibility:

* `GlobalMetrics` runs first in the callback list. It gathers every rank's validation *sums*
  (loss sum, correct count, example count) and replaces the shard's metrics in `logs` with
  the exact global ones: sum over all ranks / number of examples over all ranks. A mean of
  per-rank means would weight a small shard like a big one.
* Stock tf_keras `ReduceLROnPlateau` and `EarlyStopping` then run unchanged on every rank. Fed
  the same numbers, they take the same decisions; we reuse them rather than re-implement them
  so their semantics (wait, cooldown, min_delta, baseline, restore_best_weights,
  start_from_epoch) are Keras's own.
* `Consensus` runs last. It gathers each rank's learning rate and stop flag: if any rank
  would stop, every rank stops (as Lightning's `reduce_boolean_decision`); every rank takes
  the lowest learning rate proposed. It writes one `Decision` per epoch: the trace that
  proves the ranks agreed.

Every exchange is an all-gather of a small float64 vector followed by the same numpy
arithmetic on every rank, in rank order, so every rank computes bit-identical results.

Example::

    collective = Collective(strategy, world_size)
    deciders = decision_callbacks(spec, collective, rank, ShardEvaluator(model, x_val, y_val))
    model.fit(ds, callbacks=deciders.as_list())   # metrics, ReduceLROnPlateau, EarlyStopping, consensus
    deciders.consensus.last                       # this epoch's Decision
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Optional, Sequence

import numpy as np
import tensorflow as tf
import tf_keras as keras

from service.callbacks import ResumableEarlyStopping, ResumableReduceLROnPlateau
from service.model import scale_pixels
from service.spec import METRICS, TrainSpec
from service.stopreason import StopReason


class Collective:
    """All-gather of small float64 vectors across the ranks of a job.

    With one process (one worker, or Ray Train's local mode) it is the identity; with
    MultiWorkerMirroredStrategy it uses the strategy's own collective ops, so it needs no
    channel besides the one training already uses. Every rank must call it equally often,
    in the same order: callers do so at fixed moments (each epoch's end).
    """

    def __init__(self, strategy: Optional[tf.distribute.Strategy] = None, world_size: int = 1):
        self.strategy = strategy if world_size > 1 else None
        self.world_size = world_size
        self._gather = None

    def all_gather(self, values: Sequence[float]) -> np.ndarray:
        """Each rank's vector, stacked in rank order: shape (world_size, len(values))."""
        row = np.asarray(values, dtype=np.float64).reshape(1, -1)
        if self.strategy is None:
            return row
        if self._gather is None:
            strategy = self.strategy

            @tf.function
            def gather(x: tf.Tensor):
                # Each process holds one replica; gather its row from every replica in order.
                per_replica = strategy.experimental_distribute_values_from_function(lambda _: x)
                return strategy.gather(per_replica, axis=0)

            self._gather = gather
        return self._gather(tf.constant(row)).numpy()

    def sum(self, values: Sequence[float]) -> np.ndarray:
        return self.all_gather(values).sum(axis=0)


# ---------------------------------------------------------------------------------------------
# Global metrics


class ShardEvaluator:
    """Loss and accuracy *sums* of a model over one rank's shard of a split.

    Sums (not means) are what can be added across ranks. The per-example loss is Keras's own
    categorical cross-entropy on the softmax output, so the global mean equals what
    `model.evaluate` reports on the whole split, up to float32 rounding of the sum order.
    """

    def __init__(self, model: keras.Model, x: np.ndarray, y: np.ndarray, batch: int = 4096):
        self.model = model
        self.x, self.y = x, y
        self.batch = batch
        self._step = tf.function(self._sums, reduce_retracing=True)

    def _sums(self, x: tf.Tensor, y: tf.Tensor):
        probs = self.model(scale_pixels(x), training=False)
        onehot = tf.one_hot(tf.cast(y, tf.int32), 10)
        loss = keras.losses.categorical_crossentropy(onehot, probs)
        correct = tf.cast(tf.equal(tf.argmax(probs, axis=-1, output_type=tf.int32), tf.cast(y, tf.int32)), tf.float64)
        return tf.reduce_sum(tf.cast(loss, tf.float64)), tf.reduce_sum(correct)

    def sums(self) -> np.ndarray:
        """[loss sum, correct count, example count] over this shard."""
        total = np.zeros(3)
        for start in range(0, len(self.x), self.batch):
            loss, correct = self._step(self.x[start : start + self.batch], self.y[start : start + self.batch])
            total += (float(loss), float(correct), 0.0)
        total[2] = len(self.x)
        return total


def global_metrics(collective: Collective, evaluator: ShardEvaluator) -> dict[str, float]:
    """Exact loss and accuracy over the whole split: sums over ranks / examples over ranks."""
    loss_sum, correct, count = collective.sum(evaluator.sums())
    if count == 0:
        return {"loss": float("nan"), "accuracy": float("nan")}
    return {"loss": loss_sum / count, "accuracy": correct / count}


class GlobalMetrics(keras.callbacks.Callback):
    """Makes `logs` hold the job's metrics, not this rank's, before any decision reads them.

    Place it first in the callback list. It sets `val_loss` and `val_accuracy` from the
    global validation sums, and averages the training `loss` and `accuracy` over ranks (every
    rank runs the same number of equal-sized steps, so the plain mean is the global one). It
    also times each epoch.

    A metric that is NaN or infinite (training diverged) stops the run at this epoch: every rank
    sees the same global numbers, so every rank stops here. `non_finite` names the first such
    metric (None when all are finite).
    """

    def __init__(self, collective: Collective, val: ShardEvaluator):
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


def get_lr(model: keras.Model) -> float:
    # The variable is float32; str() of a float32 is its shortest repr (0.01, not 0.0099999998).
    return float(str(np.float32(keras.backend.get_value(model.optimizer.learning_rate))))


class Consensus(keras.callbacks.Callback):
    """Every rank applies the same learning rate and stops at the same epoch; records why.

    Place it after ReduceLROnPlateau and EarlyStopping. At each epoch's end it gathers every
    rank's (stop flag, learning rate): any stop -> all stop; the learning rate becomes the
    lowest proposed. With global metrics the ranks already agree, so this changes nothing in a
    correct run; it turns any disagreement (a rank-local decision) into a safe, recorded one
    instead of a hang or silently diverging weights.
    """

    def __init__(self, collective: Collective, rank: int, reduce_lr: ResumableReduceLROnPlateau | None = None, early_stopping: ResumableEarlyStopping | None = None, metrics: GlobalMetrics | None = None):
        super().__init__()
        self.collective = collective
        self.rank = rank
        self.reduce_lr = reduce_lr
        self.early_stopping = early_stopping
        self.metrics = metrics
        self.last: Optional[Decision] = None
        self._lr_before = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None):
        self._lr_before = get_lr(self.model)

    def on_epoch_end(self, epoch: int, logs: dict | None = None):
        logs = logs if logs is not None else {}
        wants_stop = bool(self.model.stop_training)
        proposed = get_lr(self.model)
        views = self.collective.all_gather([float(wants_stop), proposed])
        stop = bool(views[:, 0].max() > 0)
        lr = float(views[:, 1].min())
        if lr != proposed:
            keras.backend.set_value(self.model.optimizer.learning_rate, lr)
        self.model.stop_training = stop
        if stop and self.early_stopping is not None and not self.early_stopping.stopped_epoch:
            # Another rank stopped: keep EarlyStopping's bookkeeping (and best-weight restore)
            # as if this rank had decided it too.
            self.early_stopping.stopped_epoch = epoch
        lr_after = get_lr(self.model)
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
            plateau_best=None if self.reduce_lr is None else float(self.reduce_lr.best),
            plateau_cooldown=None if self.reduce_lr is None else int(self.reduce_lr.cooldown_counter),
            stopping_best=None if self.early_stopping is None else float(self.early_stopping.best),
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


def decision_callbacks(spec: TrainSpec, collective: Collective, rank: int, val: ShardEvaluator,
                       state: Optional[dict[str, dict[str, Any]]] = None) -> DecisionCallbacks:
    """Global metrics -> stock ReduceLROnPlateau / EarlyStopping -> consensus, for `spec`.

    `state` (from a checkpoint: `DecisionCallbacks.state_dicts()` of the run that stopped)
    replaces Keras's fresh-start reset.
    """
    state = state or {}
    reduce_lr = early_stopping = None
    if spec.reduce_lr is not None:
        reduce_lr = ResumableReduceLROnPlateau(**spec.reduce_lr.model_dump())
        reduce_lr.load_state_dict(state.get("reduce_lr", {}))
    if spec.early_stopping is not None:
        early_stopping = ResumableEarlyStopping(**spec.early_stopping.model_dump())
        early_stopping.load_state_dict(state.get("early_stopping", {}))
    # The rank-local mode exists to show what consensus guards against; never the default.
    metrics_collective = Collective() if spec.debug.rank_local_metrics else collective
    metrics = GlobalMetrics(metrics_collective, val)
    return DecisionCallbacks(
        metrics=metrics,
        reduce_lr=reduce_lr,
        early_stopping=early_stopping,
        consensus=Consensus(collective, rank, reduce_lr, early_stopping, metrics=metrics),
    )
