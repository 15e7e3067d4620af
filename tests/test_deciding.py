"""The synchronisation layer's logic, on real tf_keras callbacks and a real (tiny) model.

No Ray here: ranks are simulated with a small fake collective, which is pure logic. The
distributed versions of these guarantees are asserted in test_train.py.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import tf_keras as keras

from service.engines.tf_keras import callbacks as tf_callbacks
from service.engines.tf_keras.collective import Collective
from tests.support.deciders import PARAMETER_SETS, PairedCollective, ScriptedShard, metric_sequence, run_stack, spec_with
from tests.support.engines import NEEDS_JAX
from tests.support.project import program_json
from tests.support.stock import stock_replay, tiny_model


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

    deciders = tf_callbacks.decision_callbacks(spec, Collective(), 0,
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
    metrics = tf_callbacks.GlobalMetrics(collective, ScriptedShard([(3.0, 3.0, 3.0)]))  # rank 0: 3/3 correct
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
    deciders = tf_callbacks.decision_callbacks(spec, PairedCollective(rank, other), rank, ScriptedShard([]))
    consensus = deciders.consensus
    consensus.set_model(model)
    deciders.early_stopping.set_model(model)
    deciders.early_stopping.on_train_begin()
    consensus.on_epoch_begin(3)
    consensus.on_epoch_end(3, {"val_loss": 0.5})
    assert model.stop_training is True
    assert tf_callbacks.get_lr(model) == 0.001
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
        lr = tf_callbacks.get_lr(model)
        resumed_model = tiny_model(lr)
        rest, _, _ = run_stack(spec, sequence, model=resumed_model, state=state, start=k)
        combined = [(d.epoch, d.lr_after, d.stop, d.plateau_wait, d.stopping_wait) for d in first + rest]
        assert combined == [(d.epoch, d.lr_after, d.stop, d.plateau_wait, d.stopping_wait) for d in full], k


def test_stack_order_is_metrics_then_deciders_then_consensus():
    spec = spec_with("reduce_lr={}", "early_stopping={}")
    deciders = tf_callbacks.decision_callbacks(spec, Collective(), 0, ScriptedShard([]))
    kinds = [type(cb).__name__ for cb in deciders.as_list()]
    assert kinds == ["GlobalMetrics", "ResumableReduceLROnPlateau", "ResumableEarlyStopping", "Consensus"]


def test_parameter_sets_cover_every_callback_parameter():
    used = " ".join(itertools.chain.from_iterable(PARAMETER_SETS))
    for name in ("monitor", "mode", "factor", "patience", "min_delta", "cooldown", "min_lr", "baseline",
                 "restore_best_weights", "start_from_epoch"):
        assert name in used, name




@NEEDS_JAX
@pytest.mark.slow  # a Keras 3 process of its own: ~12 s
def test_keras3_stack_decides_exactly_as_stock_keras3_and_resumes_alike():
    """G3 on the keras_jax engine's classes: every parameter set and sequence above gives stock
    Keras 3's LR schedule and stop epoch; state saved at any epoch and restored decides the rest alike
    (programs/keras3_stack.py, in a Keras 3 process of its own)."""
    found = program_json("keras3_stack")
    assert found["checked"] == 3 * len(PARAMETER_SETS)
    assert found["differ"] == []
    assert found["resumed_differ"] == [] and found["reductions"] > 0
