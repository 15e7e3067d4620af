"""A multilayer perceptron for plain feature vectors, for `model.build: features.py:build` (see
features.yaml and make_data.py).

One builder serves both engines: plateau passes the engine's own Keras as `keras`, and its
`seeded_dropout` (the same masks whatever the number of workers). It returns the model
uncompiled; plateau compiles it.

Example::

    import keras
    model = build((20,), 3, keras=keras, seeded_dropout=keras.layers.Dropout, units=[32])
    model.output_shape   # (None, 3)
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, Callable, Sequence


def build(input_shape: Sequence[int], classes: int, keras: ModuleType, seeded_dropout: Callable[[float], Any],
          units: Sequence[int] = (64, 64), dropout: float = 0.1) -> Any:
    """Dense layers of `units` (relu), each followed by dropout, then softmax over `classes`.
    Features of more than one axis are flattened first."""
    layers = keras.layers
    inputs = keras.Input(shape=tuple(input_shape))
    x = layers.Flatten()(inputs) if len(input_shape) > 1 else inputs
    for width in units:
        x = layers.Dense(width, activation="relu")(x)
        x = seeded_dropout(dropout)(x)
    outputs = layers.Dense(classes, activation="softmax")(x)
    return keras.Model(inputs, outputs)
