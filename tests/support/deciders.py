"""plateau's decision stack on tf_keras driven through scripted epochs, as `model.fit` would drive
it: no Ray, no training. Ranks are simulated in one process by a scripted collective.

Example::

    spec = spec_with("reduce_lr={monitor: val_accuracy, patience: 1}")
    trace, deciders, model = run_stack(spec, metric_sequence(seed=1))
    [d.lr_after for d in trace]          # the learning rate after each epoch
"""

from __future__ import annotations

import numpy as np

from service.spec import apply_overrides, validate_train
from tests.support.stock import tiny_model


class ScriptedShard:
    """Stands in for ShardEvaluator: returns scripted (loss sum, correct, count) per epoch."""

    def __init__(self, sums_per_epoch):
        self.sums_per_epoch = list(sums_per_epoch)
        self.epoch = -1

    def sums(self):
        self.epoch += 1
        return np.asarray(self.sums_per_epoch[self.epoch], dtype=np.float64)


class PairedCollective:
    """Two ranks in one process: this rank's row, then the other rank's scripted rows."""

    def __init__(self, rank: int, other_rows):
        self.rank, self.other_rows = rank, list(other_rows)
        self.calls = 0
        self.world_size = 2

    def all_gather(self, values):
        mine = np.asarray(values, dtype=np.float64).reshape(1, -1)
        other = np.asarray(self.other_rows[self.calls], dtype=np.float64).reshape(1, -1)
        self.calls += 1
        return np.vstack([mine, other] if self.rank == 0 else [other, mine])

    def sum(self, values):
        return self.all_gather(values).sum(axis=0)


def spec_with(*overrides):
    return validate_train(apply_overrides({"scaling": {"num_workers": 1}}, list(overrides)))


def run_stack(spec, sequence, model=None, state=None, start=0):
    """Drive our decision stack (world of one) through scripted epochs, as model.fit would."""
    import tf_keras as keras

    from service.engines.tf_keras import callbacks as tf_callbacks
    from service.engines.tf_keras.collective import Collective

    model = model or tiny_model(spec.model.learning_rate)
    sums = [(v["val_loss"] * 1000, v["val_accuracy"] * 1000, 1000) for v in sequence]
    deciders = tf_callbacks.decision_callbacks(spec, Collective(), 0, ScriptedShard(sums[start:]), state)
    callbacks = keras.callbacks.CallbackList(deciders.as_list(), model=model)
    callbacks.on_train_begin()
    trace = []
    for epoch in range(start, len(sequence)):
        callbacks.on_epoch_begin(epoch)
        logs = {"loss": sequence[epoch]["loss"], "accuracy": sequence[epoch]["accuracy"]}
        callbacks.on_epoch_end(epoch, logs)
        trace.append(deciders.consensus.last)
        if model.stop_training:
            break
    callbacks.on_train_end()
    return trace, deciders, model


def metric_sequence(seed: int, epochs: int = 14):
    """A noisy, plateauing learning curve (the shape that makes the callbacks act)."""
    rng = np.random.default_rng(seed)
    acc = np.minimum(0.99, 0.9 + 0.08 * (1 - np.exp(-np.arange(epochs) / 3)) + rng.normal(0, 0.004, epochs))
    acc = np.round(acc * 1000) / 1000  # accuracies are counts / 1000
    loss = 0.4 * np.exp(-np.arange(epochs) / 4) + 0.08 + rng.normal(0, 0.01, epochs)
    return [{"loss": float(loss[i] + 0.05), "accuracy": float(acc[i] - 0.01),
             "val_loss": float(loss[i]), "val_accuracy": float(acc[i])} for i in range(epochs)]


PARAMETER_SETS = [
    ("reduce_lr={}",),
    ("reduce_lr={monitor: val_accuracy, factor: 0.1, patience: 1, min_delta: 1.0e-4}",
     "early_stopping={monitor: val_accuracy, patience: 2}"),
    ("reduce_lr={monitor: val_loss, mode: min, factor: 0.5, patience: 0, cooldown: 2, min_lr: 0.002}",),
    ("reduce_lr={monitor: val_accuracy, mode: max, factor: 0.2, patience: 2, min_delta: 0.002, cooldown: 1}",),
    ("reduce_lr={monitor: loss, factor: 0.3, patience: 1, min_lr: 0.005}",),
    ("early_stopping={monitor: val_loss, patience: 0}",),
    ("early_stopping={monitor: val_loss, min_delta: 0.01, patience: 1}",),
    ("early_stopping={monitor: val_accuracy, patience: 1, baseline: 0.97}",),
    ("early_stopping={monitor: val_accuracy, patience: 2, start_from_epoch: 4}",),
    ("early_stopping={monitor: val_accuracy, mode: max, patience: 3, min_delta: 0.003, restore_best_weights: true}",),
    ("early_stopping={monitor: accuracy, patience: 1}",),
    ("reduce_lr={monitor: val_loss, factor: 0.5, patience: 1, cooldown: 1}",
     "early_stopping={monitor: val_loss, patience: 3, restore_best_weights: true, start_from_epoch: 2}"),
]
