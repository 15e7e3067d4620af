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

That logic is every engine's (`service/core/deciding.py`); this module declares it, with the rest
of the shared callbacks (`service/core/callbacks.py`'s list), on tf_keras's classes:

* `ResumableReduceLROnPlateau`, `ResumableEarlyStopping`: the stock tf_keras callbacks, unchanged
  in what they decide, that can hand over their state to a checkpoint and take it back;
* `ReportEachEpoch`: every epoch's report to Ray Train (with the checkpoint) and to the driver;
* `FailOnce`, `PauseAfterEpoch`: drills, added only when a spec asks for them;
* `ReplicaCheck` and its drill `PerturbOnce` (`service/core/replicas.py`).

The engine's collective is `collective.py`, its shard evaluator `model.ShardEvaluator`.

Example::

    collective = Collective(strategy, world_size)
    deciders = decision_callbacks(spec, collective, rank, ShardEvaluator(model, x_val, y_val))
    model.fit(ds, callbacks=deciders.as_list())   # metrics, ReduceLROnPlateau, EarlyStopping, consensus
    deciders.consensus.last                       # this epoch's Decision
"""

from __future__ import annotations

from typing import Any, Optional

import tf_keras as keras

from service.core import deciding
from service.core.callbacks import declare
from service.core.deciding import DecisionCallbacks
from service.spec import TrainSpec

CALLBACKS = declare(keras, read_lr=lambda model: keras.backend.get_value(model.optimizer.learning_rate),
                    write_lr=lambda model, lr: keras.backend.set_value(model.optimizer.learning_rate, lr),
                    module=__name__)
GlobalMetrics, Consensus = CALLBACKS.GlobalMetrics, CALLBACKS.Consensus
TF_KERAS = CALLBACKS.kinds
get_lr = CALLBACKS.get_lr


def decision_callbacks(spec: TrainSpec, collective: Any, rank: int, val: Any,
                       state: Optional[dict[str, dict[str, Any]]] = None) -> DecisionCallbacks:
    """Global metrics -> stock ReduceLROnPlateau / EarlyStopping -> consensus, for `spec`
    (`deciding.build` with tf_keras's classes).

    `state` (from a checkpoint: `DecisionCallbacks.state_dicts()` of the run that stopped)
    replaces Keras's fresh-start reset.
    """
    return deciding.build(spec, collective, rank, val, state, TF_KERAS)
