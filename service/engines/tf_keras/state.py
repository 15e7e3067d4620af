"""The tf_keras engine's state in a checkpoint: the named arrays of `service/checkpoints/layout.py`
from a tf_keras model and its optimizer, and back.

Example::

    save(directory, model, epoch=3, callbacks={"reduce_lr": rlr.state_dict()})
    restored = restore(directory, model)        # inside the strategy's scope
    restored.epoch, restored.callbacks["reduce_lr"]["wait"]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import tf_keras as keras

from service.checkpoints.layout import Restored, read, weight_names, write


def _optimizer_names(model: keras.Model) -> list[str]:
    """A stable name per optimizer variable: its step counter, and each slot by the weight it
    belongs to (tf_keras names a slot `[scope/]<slot>/<the weight's name>`)."""
    by_keras_name = dict(zip((w.name for w in model.weights), weight_names(model)))
    optimizer = model.optimizer
    names = []
    for variable in optimizer.variables:
        if variable is optimizer.iterations:
            names.append("optimizer/iterations")
            continue
        weight = next(k for k in by_keras_name if variable.name.endswith("/" + k))
        slot = variable.name[: -len(weight) - 1].split("/")[-1]
        names.append(f"optimizer/{slot}/model/{by_keras_name[weight]}")
    return names


def state_arrays(model: keras.Model) -> dict[str, np.ndarray]:
    """Everything training carries from step to step, by stable name, in a fixed order: the
    model's weights, the optimizer's step counter and slots, and the learning rate."""
    arrays = {f"model/{n}": w for n, w in zip(weight_names(model), model.get_weights())}
    arrays.update({n: v.numpy() for n, v in zip(_optimizer_names(model), model.optimizer.variables)})
    rate = keras.backend.get_value(model.optimizer.learning_rate)
    arrays["optimizer/learning_rate"] = np.asarray(rate, dtype=np.float32)
    return arrays


def save(directory: str | Path, model: keras.Model, epoch: int, callbacks: dict[str, dict[str, Any]]) -> None:
    """Write `model`'s weights, its optimizer (state and learning rate), the epoch and the
    callbacks' state (`{name: state_dict}`; a `best_weights` list goes into the arrays)."""
    write(directory, state_arrays(model), weight_names(model), epoch, callbacks)


def restore(directory: str | Path, model: keras.Model) -> Restored:
    """Put a checkpoint's weights and optimizer state into `model`; return the epoch and the
    callbacks' state (with `best_weights` back in it).

    Call inside the strategy's scope: Adam creates its slots lazily, and they must be built as
    mirrored variables before they can be assigned.
    """
    names = weight_names(model)
    restored, saved = read(directory, names)
    model.set_weights([saved[f"model/{n}"] for n in names])
    model.optimizer.build(model.trainable_variables)
    for name, variable in zip(_optimizer_names(model), model.optimizer.variables):
        variable.assign(saved[name])
    model.optimizer.learning_rate.assign(saved["optimizer/learning_rate"])
    return restored
