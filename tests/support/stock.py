"""Stock ReduceLROnPlateau and EarlyStopping fed a run's global metrics, epoch by epoch, in one
uninterrupted fit: the reference every decision of plateau's is held to.

tf_keras's run in this process; Keras 3's (the keras_jax engine's) in a process of its own
(`keras3.py`), since this process's Keras is tf_keras.

Example::

    lrs, stop_epoch, best_epoch = stock_replay_on("keras_jax", spec, [r["values"] for r in rank0])
"""

from __future__ import annotations

import json
from typing import Optional

from tests.support.project import program_json


def tiny_model(lr: float = 0.01):
    """A one-Dense tf_keras model compiled with Adam at `lr`: what the callbacks act on."""
    import tf_keras as keras

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=lr), loss="mse")
    return model


def stock_trace(spec, sequence) -> tuple[list[dict], object, object]:
    """Stock tf_keras ReduceLROnPlateau and EarlyStopping fed `sequence`.

    Returns (one row per epoch: lr after it, plateau_wait, stopping_wait, stop; the stock
    ReduceLROnPlateau; the stock EarlyStopping), epochs numbered from 1.
    """
    import tf_keras as keras

    from service.engines.tf_keras import callbacks as tf_callbacks

    model = tiny_model(spec.model.learning_rate)
    reduce_lr = keras.callbacks.ReduceLROnPlateau(**spec.reduce_lr.model_dump()) if spec.reduce_lr else None
    early_stopping = keras.callbacks.EarlyStopping(**spec.early_stopping.model_dump()) if spec.early_stopping else None
    callbacks = keras.callbacks.CallbackList([cb for cb in (reduce_lr, early_stopping) if cb], model=model)
    callbacks.on_train_begin()
    rows = []
    for epoch, values in enumerate(sequence):
        callbacks.on_epoch_end(epoch, dict(values))
        rows.append({"epoch": epoch + 1, "lr": tf_callbacks.get_lr(model), "stop": bool(model.stop_training),
                     "plateau_wait": reduce_lr.wait if reduce_lr else None,
                     "stopping_wait": early_stopping.wait if early_stopping else None})
        if model.stop_training:
            break
    callbacks.on_train_end()
    return rows, reduce_lr, early_stopping


def stock_replay(spec, sequence):
    """(learning rate after each epoch, stop epoch or None, EarlyStopping's best epoch or None) of
    stock tf_keras fed `sequence`, epochs numbered from 1."""
    rows, _, early_stopping = stock_trace(spec, sequence)
    stop_epoch = rows[-1]["epoch"] if rows and rows[-1]["stop"] else None
    best_epoch = early_stopping.best_epoch + 1 if early_stopping is not None else None
    return [r["lr"] for r in rows], stop_epoch, best_epoch


def stock_trace_on(engine: str, spec, sequence) -> tuple[list[dict], Optional[int]]:
    """`stock_trace`'s rows on the stock callbacks of `engine`'s Keras, and EarlyStopping's best epoch."""
    if engine == "tf_keras":
        rows, _, early_stopping = stock_trace(spec, sequence)
        return rows, early_stopping.best_epoch + 1 if early_stopping is not None else None
    found = program_json("keras3_replay", spec.model_dump_json(), json.dumps(list(sequence)))
    return found["rows"], found["best_epoch"]


def stock_replay_on(engine: str, spec, sequence):
    """`stock_replay` on the stock callbacks of `engine`'s Keras (`stock_trace_on`)."""
    rows, best_epoch = stock_trace_on(engine, spec, sequence)
    stop_epoch = rows[-1]["epoch"] if rows and rows[-1]["stop"] else None
    return [r["lr"] for r in rows], stop_epoch, best_epoch
