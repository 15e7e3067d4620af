"""A small convolutional network for images, for `model.build: cnn.py:build` (see cnn.yaml).

One builder serves both engines: plateau passes the engine's own Keras as `keras` (tf_keras 2 or
Keras 3), so nothing here imports a framework, and the engine's `seeded_dropout`, a Dropout whose
masks are the same whatever the number of workers and after a resume. It returns the model
uncompiled: plateau compiles it with the spec's learning rate, categorical cross-entropy and
accuracy.

Example::

    import keras
    model = build((28, 28), 10, keras=keras, seeded_dropout=keras.layers.Dropout, filters=16)
    model.output_shape   # (None, 10)
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, Callable, Sequence


def build(input_shape: Sequence[int], classes: int, keras: ModuleType, seeded_dropout: Callable[[float], Any],
          filters: int = 32, dense: int = 128, dropout: float = 0.25) -> Any:
    """Conv 3x3 (`filters`) -> max-pool -> conv 3x3 (2 x `filters`) -> max-pool -> dropout ->
    dense (`dense`, relu) -> dropout -> softmax over `classes`.

    `input_shape` is one example's: (28, 28) for MNIST, which gets a channel axis here, or
    (height, width, channels).
    """
    layers = keras.layers
    inputs = keras.Input(shape=tuple(input_shape))
    x = inputs
    if len(input_shape) == 2:  # grey images without a channel axis: Conv2D needs one
        x = layers.Reshape((*input_shape, 1))(x)
    x = layers.Conv2D(filters, 3, activation="relu")(x)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Conv2D(2 * filters, 3, activation="relu")(x)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Flatten()(x)
    x = seeded_dropout(dropout)(x)
    x = layers.Dense(dense, activation="relu")(x)
    x = seeded_dropout(dropout)(x)
    outputs = layers.Dense(classes, activation="softmax")(x)
    return keras.Model(inputs, outputs)
