"""Keras 3 (the keras_jax engine's Keras): stock Keras 3 ReduceLROnPlateau and EarlyStopping fed a
metric sequence, and plateau's stack on Keras 3's classes fed the same. Imported only by processes
that set KERAS_BACKEND=jax first (the test process has tf_keras): programs/keras3_replay.py and
programs/keras3_stack.py.

Example::

    rows, best_epoch = stock_trace(spec, sequence)
"""

from __future__ import annotations

import os
from typing import Optional

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402 - after the backend is chosen
import numpy as np  # noqa: E402

from service.core import deciding  # noqa: E402
from service.engines.keras_jax.callbacks import KERAS_JAX, get_lr  # noqa: E402
from service.spec import TrainSpec  # noqa: E402


def tiny_model(lr: float = 0.01) -> keras.Model:
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=lr), loss="mse")
    model.stop_training = False
    return model


def stock_trace(spec: TrainSpec, sequence: list[dict]) -> tuple[list[dict], Optional[int]]:
    """Stock Keras 3 callbacks fed `sequence` in one uninterrupted run, as stock.py's
    `stock_trace` on tf_keras: a row per epoch (lr after it, plateau_wait, stopping_wait, stop), and
    EarlyStopping's best epoch (1-based; None without it). `mode: auto` resolved as the engine does
    (KERAS_JAX.arguments)."""
    model = tiny_model(spec.model.learning_rate)
    reduce_lr = keras.callbacks.ReduceLROnPlateau(**KERAS_JAX.arguments(spec.reduce_lr)) if spec.reduce_lr else None
    early_stopping = (keras.callbacks.EarlyStopping(**KERAS_JAX.arguments(spec.early_stopping))
                      if spec.early_stopping else None)
    callbacks = keras.callbacks.CallbackList([cb for cb in (reduce_lr, early_stopping) if cb], model=model)
    callbacks.on_train_begin()
    rows = []
    for epoch, values in enumerate(sequence):
        callbacks.on_epoch_end(epoch, dict(values))
        rows.append({"epoch": epoch + 1, "lr": get_lr(model), "stop": bool(model.stop_training),
                     "plateau_wait": reduce_lr.wait if reduce_lr else None,
                     "stopping_wait": early_stopping.wait if early_stopping else None})
        if model.stop_training:
            break
    callbacks.on_train_end()
    return rows, (early_stopping.best_epoch + 1 if early_stopping is not None else None)


def stock_replay(spec: TrainSpec, sequence: list[dict]) -> tuple[list[float], Optional[int], Optional[int]]:
    """(learning rate after each epoch, stop epoch or None, EarlyStopping's best epoch or None) of
    `stock_trace`, epochs from 1."""
    rows, best_epoch = stock_trace(spec, sequence)
    return [r["lr"] for r in rows], (rows[-1]["epoch"] if rows and rows[-1]["stop"] else None), best_epoch


class ScriptedShard:
    """Stands in for a shard evaluator: scripted (loss sum, correct, count) per epoch."""

    def __init__(self, sums_per_epoch: list):
        self.sums_per_epoch, self.epoch = list(sums_per_epoch), -1

    def sums(self) -> np.ndarray:
        self.epoch += 1
        return np.asarray(self.sums_per_epoch[self.epoch], dtype=np.float64)


def run_stack(spec: TrainSpec, sequence: list[dict], model: keras.Model | None = None, state: dict | None = None,
              start: int = 0) -> tuple[list, deciding.DecisionCallbacks, keras.Model]:
    """plateau's stack on Keras 3's classes (one rank) through scripted epochs, as the engine's loop."""
    model = model or tiny_model(spec.model.learning_rate)
    sums = [(v["val_loss"] * 1000, v["val_accuracy"] * 1000, 1000) for v in sequence]
    deciders = deciding.build(spec, deciding.LocalCollective(), 0, ScriptedShard(sums[start:]), state, KERAS_JAX)
    callbacks = keras.callbacks.CallbackList(deciders.as_list(), model=model)
    callbacks.on_train_begin()
    trace = []
    for epoch in range(start, len(sequence)):
        callbacks.on_epoch_begin(epoch)
        callbacks.on_epoch_end(epoch, {"loss": sequence[epoch]["loss"], "accuracy": sequence[epoch]["accuracy"]})
        trace.append(deciders.consensus.last)
        if model.stop_training:
            break
    callbacks.on_train_end()
    return trace, deciders, model
