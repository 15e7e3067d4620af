"""The synchronisation layer's logic, on real tf_keras callbacks and a real (tiny) model.

No Ray here: ranks are simulated with a small fake collective, which is pure logic. The
distributed versions of these guarantees are asserted in test_train.py.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import tf_keras as keras

from service import sync
from service.spec import apply_overrides, validate_train
from tests.helpers import NEEDS_JAX, stock_replay, tiny_model


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
    model = model or tiny_model(spec.model.learning_rate)
    sums = [(v["val_loss"] * 1000, v["val_accuracy"] * 1000, 1000) for v in sequence]
    deciders = sync.decision_callbacks(spec, sync.Collective(), 0, ScriptedShard(sums[start:]), state)
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


@pytest.mark.parametrize("overrides", PARAMETER_SETS, ids=lambda o: " ".join(o)[:60])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_stack_decides_exactly_as_stock_keras(overrides, seed):
    """G3 for every parameter: our stack's LR schedule and stop epoch == stock tf_keras."""
    spec = spec_with(*overrides)
    sequence = metric_sequence(seed)
    trace, _, _ = run_stack(spec, sequence)
    lrs, stop_epoch, _ = stock_replay(spec, sequence)
    assert [d.lr_after for d in trace] == lrs
    assert (trace[-1].epoch if trace[-1].stop else None) == stop_epoch
    # What the callbacks saw is exactly sums / count.
    assert [d.values["val_accuracy"] for d in trace] == [v["val_accuracy"] for v in sequence[: len(trace)]]


def test_restore_best_weights_restores_the_best_epochs_weights():
    spec = spec_with("early_stopping={monitor: val_accuracy, patience: 2, restore_best_weights: true}")
    sequence = [dict(loss=1, accuracy=0.5, val_loss=1, val_accuracy=a) for a in (0.90, 0.95, 0.94, 0.93, 0.99)]
    model = tiny_model()
    snapshots = []

    class Perturb(keras.callbacks.Callback):  # stands in for training: new weights each epoch
        def on_epoch_end(self, epoch, logs=None):
            model.set_weights([w + epoch + 1 for w in model.get_weights()])
            snapshots.append([w.copy() for w in model.get_weights()])

    deciders = sync.decision_callbacks(spec, sync.Collective(), 0,
                                       ScriptedShard([(1000, a * 1000, 1000) for a in (0.90, 0.95, 0.94, 0.93, 0.99)]))
    callbacks = keras.callbacks.CallbackList([Perturb(), *deciders.as_list()], model=model)
    callbacks.on_train_begin()
    for epoch, values in enumerate(sequence):
        callbacks.on_epoch_begin(epoch)
        callbacks.on_epoch_end(epoch, {"loss": 1.0, "accuracy": 0.5})
        if model.stop_training:
            break
    callbacks.on_train_end()
    assert deciders.consensus.last.epoch == 4 and deciders.consensus.last.stop
    for restored, best in zip(model.get_weights(), snapshots[1]):  # epoch 2 was the best
        np.testing.assert_array_equal(restored, best)


def test_global_metrics_weight_by_examples_not_by_rank():
    """G1 in miniature: uneven shards (3 and 1000 examples) give sums/count, not mean of means."""
    model = tiny_model()
    collective = PairedCollective(0, [[0.0, 1.0, 1000.0, 0.2, 0.9]])  # rank 1: 1/1000 correct
    metrics = sync.GlobalMetrics(collective, ScriptedShard([(3.0, 3.0, 3.0)]))  # rank 0: 3/3 correct
    metrics.set_model(model)
    logs = {"loss": 0.4, "accuracy": 0.7}
    metrics.on_epoch_end(0, logs)
    assert logs["val_accuracy"] == 4 / 1003
    assert logs["val_loss"] == 3.0 / 1003
    assert logs["val_accuracy"] != (1.0 + 1 / 1000) / 2
    assert logs["loss"] == pytest.approx(0.3) and logs["accuracy"] == pytest.approx(0.8)


@pytest.mark.parametrize("rank", [0, 1])
def test_consensus_any_stop_stops_every_rank_and_lowest_lr_wins(rank):
    """G4: a rank that would not stop is stopped with the others; LRs converge to the minimum."""
    spec = spec_with("early_stopping={monitor: val_loss, patience: 5}")
    model = tiny_model(0.01)
    other = [[1.0, 0.001]]  # the other rank wants to stop and proposes lr 0.001
    deciders = sync.decision_callbacks(spec, PairedCollective(rank, other), rank, ScriptedShard([]))
    consensus = deciders.consensus
    consensus.set_model(model)
    deciders.early_stopping.set_model(model)
    deciders.early_stopping.on_train_begin()
    consensus.on_epoch_begin(3)
    consensus.on_epoch_end(3, {"val_loss": 0.5})
    assert model.stop_training is True
    assert sync.get_lr(model) == 0.001
    decision = consensus.last
    assert (decision.lr_before, decision.lr_after, decision.reduced, decision.stop) == (0.01, 0.001, True, True)
    assert decision.epoch == 4
    # EarlyStopping's own bookkeeping follows the consensus (its best-weight restore relies on it).
    assert deciders.early_stopping.stopped_epoch == 3


def test_resumed_stack_decides_like_the_uninterrupted_one():
    """Callback state saved at epoch k and restored gives the same later decisions."""
    # patience and cooldown of 2: state that a fresh start would lose (Keras's cooldown of 1
    # is spent before it is checked, so it would not test anything).
    spec = spec_with("reduce_lr={monitor: val_accuracy, factor: 0.5, patience: 2, cooldown: 2}",
                     "early_stopping={monitor: val_accuracy, patience: 5, restore_best_weights: true}")
    sequence = metric_sequence(5, epochs=20)
    full, _, _ = run_stack(spec, sequence)
    for k in range(1, len(full)):
        first, deciders, model = run_stack(spec, sequence[:k])
        state = deciders.state_dicts()
        lr = sync.get_lr(model)
        resumed_model = tiny_model(lr)
        rest, _, _ = run_stack(spec, sequence, model=resumed_model, state=state, start=k)
        combined = [(d.epoch, d.lr_after, d.stop, d.plateau_wait, d.stopping_wait) for d in first + rest]
        assert combined == [(d.epoch, d.lr_after, d.stop, d.plateau_wait, d.stopping_wait) for d in full], k


def test_stack_order_is_metrics_then_deciders_then_consensus():
    spec = spec_with("reduce_lr={}", "early_stopping={}")
    deciders = sync.decision_callbacks(spec, sync.Collective(), 0, ScriptedShard([]))
    kinds = [type(cb).__name__ for cb in deciders.as_list()]
    assert kinds == ["GlobalMetrics", "ResumableReduceLROnPlateau", "ResumableEarlyStopping", "Consensus"]


def test_parameter_sets_cover_every_callback_parameter():
    used = " ".join(itertools.chain.from_iterable(PARAMETER_SETS))
    for name in ("monitor", "mode", "factor", "patience", "min_delta", "cooldown", "min_lr", "baseline",
                 "restore_best_weights", "start_from_epoch"):
        assert name in used, name


# The same checks on Keras 3's classes (the keras_jax engine's stack), in a process of its own.
KERAS3_STACK = r"""
import json, os, sys
os.environ["KERAS_BACKEND"] = "jax"
from tests.keras3_stack import run_stack, stock_replay, tiny_model
from service.keras_jax.callbacks import get_lr
from tests.test_sync import PARAMETER_SETS, metric_sequence, spec_with

differ, checked = [], 0
for overrides in PARAMETER_SETS:
    for seed in (1, 2, 3):
        spec, sequence = spec_with(*overrides), metric_sequence(seed)
        trace, _, _ = run_stack(spec, sequence)
        lrs, stop_epoch, _ = stock_replay(spec, sequence)
        mine = ([d.lr_after for d in trace], trace[-1].epoch if trace[-1].stop else None)
        checked += 1
        if mine != (lrs, stop_epoch):
            differ.append([list(overrides), seed, mine, [lrs, stop_epoch]])

spec = spec_with("reduce_lr={monitor: val_accuracy, factor: 0.5, patience: 2, cooldown: 2}",
                 "early_stopping={monitor: val_accuracy, patience: 5, restore_best_weights: true}")
sequence = metric_sequence(5, epochs=20)
full, _, _ = run_stack(spec, sequence)
key = lambda trace: [(d.epoch, d.lr_after, d.stop, d.plateau_wait, d.stopping_wait) for d in trace]
resumed_differ = []
for k in range(1, len(full)):
    first, deciders, model = run_stack(spec, sequence[:k])
    rest, _, _ = run_stack(spec, sequence, model=tiny_model(get_lr(model)), state=deciders.state_dicts(), start=k)
    if key(first + rest) != key(full):
        resumed_differ.append(k)
print("@@" + json.dumps({"checked": checked, "differ": differ, "resumed_differ": resumed_differ,
                         "reductions": sum(d.reduced for d in full)}))
"""


@NEEDS_JAX
@pytest.mark.slow  # a Keras 3 process of its own: ~12 s
def test_keras3_stack_decides_exactly_as_stock_keras3_and_resumes_alike():
    """G3 on the keras_jax engine's classes: every parameter set and sequence above gives stock
    Keras 3's LR schedule and stop epoch; state saved at any epoch and restored decides the rest alike."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", KERAS3_STACK], cwd=root, env=env, capture_output=True, text=True,
                          timeout=300)
    assert "@@" in done.stdout, done.stderr[-3000:]
    found = json.loads(done.stdout.rsplit("@@", 1)[1])
    assert found["checked"] == 3 * len(PARAMETER_SETS)
    assert found["differ"] == []
    assert found["resumed_differ"] == [] and found["reductions"] > 0
