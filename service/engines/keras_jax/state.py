"""The keras_jax engine's state in a checkpoint: the named arrays of `service/checkpoints/layout.py`
(the tf_keras engine's names: `model/0.dense/kernel`, `optimizer/m/model/0.dense/kernel`, ...) from
a Keras 3 model and its optimizer, and back.

Example::

    save(directory, model, epoch=3, callbacks={"reduce_lr": rlr.state_dict()})
    restored = restore(directory, model)
    restored.epoch, restored.callbacks["reduce_lr"]["wait"]
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from service.checkpoints.layout import Restored, read, weight_names, write
from service.compat.keras import adam_slots


def state_arrays(model: keras.Model) -> dict[str, np.ndarray]:
    """Weights, Adam's step counter and moments, and the learning rate, by the checkpoint's names
    (the tf_keras engine's: `model/0.dense/kernel`, `optimizer/m/model/0.dense/kernel`, ...)."""
    names = weight_names(model)
    optimizer = model.optimizer
    arrays = {f"model/{n}": np.asarray(w) for n, w in zip(names, model.get_weights())}
    arrays["optimizer/iterations"] = np.asarray(optimizer.iterations.value)
    # Adam keeps a momentum and a velocity per trainable variable, in the model's weight order.
    for name, m, v in zip(names, *adam_slots(optimizer)):
        arrays[f"optimizer/m/model/{name}"] = np.asarray(m.value)
        arrays[f"optimizer/v/model/{name}"] = np.asarray(v.value)
    arrays["optimizer/learning_rate"] = np.asarray(optimizer.learning_rate.value, dtype=np.float32)
    for index, variable in enumerate(random_states(model)):
        arrays[f"model/random/{index}"] = np.asarray(variable.value)
    return arrays


def random_states(model: keras.Model) -> list:
    """The model's variables that are not weights: the random state of its stock layers (a
    Dropout's seed generator), which a resume must carry on from, in the model's order."""
    weights = {id(w) for w in model.weights}
    return [v for v in model.non_trainable_variables if id(v) not in weights]


def load_state(model: keras.Model, arrays: dict[str, np.ndarray]) -> None:
    """Put `state_arrays`' arrays (read back from a checkpoint) into `model` and its optimizer."""
    names = weight_names(model)
    optimizer = model.optimizer
    model.set_weights([arrays[f"model/{n}"] for n in names])
    optimizer.iterations.assign(arrays["optimizer/iterations"])
    for name, m, v in zip(names, *adam_slots(optimizer)):
        m.assign(arrays[f"optimizer/m/model/{name}"])
        v.assign(arrays[f"optimizer/v/model/{name}"])
    optimizer.learning_rate.assign(arrays["optimizer/learning_rate"])
    for index, variable in enumerate(random_states(model)):
        variable.assign(arrays[f"model/random/{index}"])


def save(directory: Any, model: keras.Model, epoch: int, callbacks: dict[str, dict[str, Any]]) -> None:
    """The checkpoint's files (`service/checkpoints/layout.py`) from a Keras 3 model."""
    write(directory, state_arrays(model), weight_names(model), epoch, callbacks)


def restore(directory: Any, model: keras.Model) -> Restored:
    """The model's state in place; the epoch and callbacks' state."""
    restored, arrays = read(directory, weight_names(model))
    load_state(model, arrays)
    return restored
