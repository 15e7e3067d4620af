"""Builders of users' models the tests train (`model.build: tests.support.models:NAME`): each
takes the engine's Keras, so one builder serves both engines."""

from __future__ import annotations

from typing import Any


def cnn(input_shape: tuple[int, ...], classes: int, keras: Any, seeded_dropout: Any, filters: int = 8) -> Any:
    """A small CNN for 28x28 images (flat 784 vectors, HxW or HxWx1): Conv2D, pooling, dropout."""
    inputs = keras.Input(shape=input_shape)
    x = keras.layers.Reshape((28, 28, 1))(inputs)
    x = keras.layers.Conv2D(filters, 3, activation="relu")(x)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Flatten()(x)
    x = seeded_dropout(0.25)(x)
    x = keras.layers.Dense(32, activation="relu")(x)
    x = seeded_dropout(0.25)(x)
    outputs = keras.layers.Dense(classes, activation="softmax")(x)
    return keras.Model(inputs, outputs)


def seed_mlp_by_name(input_shape: tuple[int, ...], classes: int, keras: Any, seeded_dropout: Any, seed: int) -> Any:
    """The built-in model, reached the way a user's builder is."""
    from service.engines.building import seed_mlp

    return seed_mlp(input_shape, classes, keras, seeded_dropout, seed)


def one_class_too_many(input_shape: tuple[int, ...], classes: int, keras: Any) -> Any:
    """A model whose output is not one probability per class."""
    inputs = keras.Input(shape=input_shape)
    flat = keras.layers.Flatten()(inputs)
    return keras.Model(inputs, keras.layers.Dense(classes + 1, activation="softmax")(flat))


def broken(input_shape: tuple[int, ...], classes: int) -> Any:
    """A builder that fails."""
    raise ValueError("filters must be positive")
