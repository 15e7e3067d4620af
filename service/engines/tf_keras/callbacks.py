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

That logic is every engine's (`service/deciding.py`); this module declares it on tf_keras's
classes, with the rest of the engine's callbacks (`service/reporting.py`, `service/replicas.py`):

* `ResumableReduceLROnPlateau`, `ResumableEarlyStopping`: the stock tf_keras callbacks, unchanged
  in what they decide, that can hand over their state to a checkpoint and take it back;
* `ReportEachEpoch`: every epoch's report to Ray Train (with the checkpoint) and to the driver;
* `FailOnce`, `PauseAfterEpoch`: drills, added only when a spec asks for them;
* `ReplicaCheck` and its drill `PerturbOnce` (`service/replicas.py`).

The engine's collective is `collective.py`, its shard evaluator `model.ShardEvaluator`.

Example::

    collective = Collective(strategy, world_size)
    deciders = decision_callbacks(spec, collective, rank, ShardEvaluator(model, x_val, y_val))
    model.fit(ds, callbacks=deciders.as_list())   # metrics, ReduceLROnPlateau, EarlyStopping, consensus
    deciders.consensus.last                       # this epoch's Decision
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import tf_keras as keras

from service import deciding, replicas, reporting
from service.deciding import Decision, DecisionCallbacks, global_metrics  # noqa: F401 - this engine's names for them
from service.reporting import DriverQueue  # noqa: F401 - the worker loop's line to the driver
from service.spec import TrainSpec


class ResumableReduceLROnPlateau(deciding.ResumableReduceLROnPlateau, keras.callbacks.ReduceLROnPlateau):
    """tf_keras `ReduceLROnPlateau` whose `best`, `wait` and `cooldown_counter` survive a restart."""


class ResumableEarlyStopping(deciding.ResumableEarlyStopping, keras.callbacks.EarlyStopping):
    """tf_keras `EarlyStopping` whose state survives a restart and that says why it stopped."""


class ReportEachEpoch(reporting.ReportEachEpoch, keras.callbacks.Callback):
    """`reporting.ReportEachEpoch` on a tf_keras callback."""


class PauseAfterEpoch(reporting.PauseAfterEpoch, keras.callbacks.Callback):
    """`reporting.PauseAfterEpoch` on a tf_keras callback."""


class FailOnce(reporting.FailOnce, keras.callbacks.Callback):
    """`reporting.FailOnce` on a tf_keras callback."""


class ReplicaCheck(replicas.ReplicaCheck, keras.callbacks.Callback):
    """`replicas.ReplicaCheck` on a tf_keras callback."""


class PerturbOnce(replicas.PerturbOnce, keras.callbacks.Callback):
    """`replicas.PerturbOnce` on a tf_keras callback."""


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


def decision_callbacks(spec: TrainSpec, collective: Any, rank: int, val: Any,
                       state: Optional[dict[str, dict[str, Any]]] = None) -> DecisionCallbacks:
    """Global metrics -> stock ReduceLROnPlateau / EarlyStopping -> consensus, for `spec`
    (`deciding.build` with tf_keras's classes).

    `state` (from a checkpoint: `DecisionCallbacks.state_dicts()` of the run that stopped)
    replaces Keras's fresh-start reset.
    """
    return deciding.build(spec, collective, rank, val, state, TF_KERAS)
