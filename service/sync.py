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

That logic is every engine's (`service/deciding.py`); this module is the tf_keras engine's part:
its collective, its shard evaluator, and the callbacks as tf_keras classes.

Example::

    collective = Collective(strategy, world_size)
    deciders = decision_callbacks(spec, collective, rank, ShardEvaluator(model, x_val, y_val))
    model.fit(ds, callbacks=deciders.as_list())   # metrics, ReduceLROnPlateau, EarlyStopping, consensus
    deciders.consensus.last                       # this epoch's Decision
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import tensorflow as tf
import tf_keras as keras

from service import deciding
from service.callbacks import ResumableEarlyStopping, ResumableReduceLROnPlateau
from service.deciding import Decision, DecisionCallbacks, global_metrics  # noqa: F401 - this engine's names for them
from service.model import scale_pixels
from service.spec import TrainSpec


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


class GlobalMetrics(deciding.GlobalMetrics, keras.callbacks.Callback):
    """`deciding.GlobalMetrics` on a tf_keras callback."""


# ---------------------------------------------------------------------------------------------
# Consensus and the decision trace


def get_lr(model: keras.Model) -> float:
    # The variable is float32; str() of a float32 is its shortest repr (0.01, not 0.0099999998).
    return float(str(np.float32(keras.backend.get_value(model.optimizer.learning_rate))))


def set_lr(model: keras.Model, lr: float) -> None:
    keras.backend.set_value(model.optimizer.learning_rate, lr)


class Consensus(deciding.Consensus, keras.callbacks.Callback):
    """`deciding.Consensus` on a tf_keras callback."""

    read_lr = staticmethod(get_lr)
    write_lr = staticmethod(set_lr)


# ---------------------------------------------------------------------------------------------
# The whole stack, in order


TF_KERAS = deciding.Kinds(GlobalMetrics, ResumableReduceLROnPlateau, ResumableEarlyStopping, Consensus)


def decision_callbacks(spec: TrainSpec, collective: Collective, rank: int, val: ShardEvaluator,
                       state: Optional[dict[str, dict[str, Any]]] = None) -> DecisionCallbacks:
    """Global metrics -> stock ReduceLROnPlateau / EarlyStopping -> consensus, for `spec`
    (`deciding.build` with tf_keras's classes).

    `state` (from a checkpoint: `DecisionCallbacks.state_dicts()` of the run that stopped)
    replaces Keras's fresh-start reset.
    """
    return deciding.build(spec, collective, rank, val, state, TF_KERAS)
