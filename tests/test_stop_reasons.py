"""Why a run stopped, decided where the knowledge is (no Ray): EarlyStopping's patience or baseline,
another rank's stop spread by consensus, the last epoch, a non-finite global metric.
"""

from __future__ import annotations

import math

import numpy as np
import tf_keras as keras

from service.report.lines import stop_words
from service.report.records import DecisionRecord
from service.engines.tf_keras import callbacks as tf_callbacks
from service.engines.tf_keras.collective import Collective
from tests.support.stock import stock_replay, tiny_model
from tests.support.deciders import PairedCollective, run_stack, ScriptedShard, spec_with


# ---------------------------------------------------------------------------------------------
# Stop reasons, decided where the knowledge is


def _reasons(trace):
    return [d.stop_reason for d in trace]


def test_early_stopping_tells_patience_from_baseline():
    flat = [dict(loss=1, accuracy=0.5, val_loss=1, val_accuracy=a) for a in (0.90, 0.92, 0.92, 0.92)]
    spec = spec_with("early_stopping={monitor: val_accuracy, patience: 2}")
    trace, deciders, _ = run_stack(spec, flat)
    assert [d.epoch for d in trace if d.stop] == [4] and _reasons(trace)[-1] == "patience"
    assert deciders.state_dicts()["early_stopping"]["stop_reason"] == "patience"  # kept in the checkpoint
    # Still improving, but below the baseline: stock tf_keras stops on the baseline at epoch 3,
    # where the same callback without a baseline would go on.
    rising = [dict(loss=1, accuracy=0.5, val_loss=1, val_accuracy=a) for a in (0.90, 0.92, 0.91, 0.93)]
    spec = spec_with("early_stopping={monitor: val_accuracy, patience: 2, baseline: 0.97}")
    trace, _, _ = run_stack(spec, rising)
    assert [d.epoch for d in trace if d.stop] == [3] and _reasons(trace)[-1] == "baseline"
    assert stock_replay(spec, rising)[1] == 3
    assert stock_replay(spec_with("early_stopping={monitor: val_accuracy, patience: 2}"), rising)[1] is None


def test_consensus_names_another_ranks_stop_and_the_last_epoch_names_max_epochs():
    spec = spec_with("early_stopping={monitor: val_loss, patience: 5}")
    model = tiny_model(0.01)
    deciders = tf_callbacks.decision_callbacks(spec, PairedCollective(0, [[1.0, 0.01]]), 0, ScriptedShard([]))
    for cb in (deciders.consensus, deciders.early_stopping):
        cb.set_model(model)
    deciders.early_stopping.on_train_begin()
    deciders.consensus.on_epoch_begin(0)
    deciders.consensus.on_epoch_end(0, {"val_loss": 0.5})
    assert (deciders.consensus.last.stop, deciders.consensus.last.stop_reason) == (True, "consensus")

    sequence = [dict(loss=1, accuracy=0.5, val_loss=1 - e / 10, val_accuracy=0.9) for e in range(3)]
    model = tiny_model(0.01)
    deciders = tf_callbacks.decision_callbacks(spec_with("reduce_lr={}"), Collective(), 0,
                                       ScriptedShard([(v["val_loss"] * 10, 9, 10) for v in sequence]))
    callbacks = keras.callbacks.CallbackList(deciders.as_list(), model=model)
    callbacks.set_params({"epochs": 3})
    reasons = []
    for epoch, values in enumerate(sequence):
        callbacks.on_epoch_begin(epoch)
        callbacks.on_epoch_end(epoch, {"loss": 1.0, "accuracy": 0.5})
        reasons.append(deciders.consensus.last.stop_reason)
    assert reasons == [None, None, "max_epochs"]


def test_a_non_finite_global_metric_stops_at_that_epoch_with_no_early_stopping_configured():
    spec = spec_with("reduce_lr={monitor: val_loss}")
    sums = [(300.0, 900.0, 1000.0), (np.nan, 100.0, 1000.0), (200.0, 950.0, 1000.0)]
    deciders = tf_callbacks.decision_callbacks(spec, Collective(), 0, ScriptedShard(sums))
    model = tiny_model(0.01)
    callbacks = keras.callbacks.CallbackList(deciders.as_list(), model=model)
    callbacks.set_params({"epochs": 3})
    callbacks.on_train_begin()
    trace = []
    for epoch in range(3):
        callbacks.on_epoch_begin(epoch)
        callbacks.on_epoch_end(epoch, {"loss": 1.0, "accuracy": 0.5})
        trace.append(deciders.consensus.last)
        if model.stop_training:
            break
    assert [(d.epoch, d.stop, d.stop_reason) for d in trace] == [(1, False, None), (2, True, "non_finite")]
    assert math.isnan(trace[-1].values["val_loss"])
    assert stop_words(DecisionRecord.from_json(trace[-1].to_json())) == "stopped: val_loss is nan"
