"""A user's model, built in a worker: the builder a spec names (`model.build`), called the same way
on every engine.

The builder gets the shape of one example, the number of classes and the spec's `model.kwargs`;
it may also ask, by naming the parameter, for `keras` (the engine's Keras: tf_keras, or Keras 3)
and `seeded_dropout` (the engine's dropout whose masks are a pure function of the run's seed and
the optimizer's step, the same whatever the number of workers; see docs/your-model.md). It
returns an uncompiled model whose output is one probability per class; the engine compiles it.

Example::

    def cnn(input_shape, classes, keras, seeded_dropout, filters=32):
        ...
    model = model_of(spec.model, keras, SeededDropout, (28, 28), 10, seed=7)
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

# What a builder may ask for by naming the parameter, beside the shape, the classes and the kwargs.
OFFERED = ("keras", "seeded_dropout", "seed")


class BuildError(RuntimeError):
    """The builder did not give a model plateau can train: one line saying what it gave."""


def call_builder(builder: Callable[..., Any], input_shape: tuple[int, ...], classes: int, kwargs: dict[str, Any],
                 offered: dict[str, Any]) -> Any:
    """`builder(input_shape, classes, **kwargs)`, plus whichever of `offered` it names."""
    parameters = inspect.signature(builder).parameters
    extra = {name: value for name, value in offered.items() if name in parameters}
    return builder(tuple(input_shape), classes, **extra, **kwargs)


def seed_mlp(input_shape: tuple[int, ...], classes: int, keras: Any, seeded_dropout: Callable[..., Any], seed: int,
             hidden_units: int = 784, dropout: float = 0.5) -> Any:
    """The seed's MLP, the model of a spec without `model.build`: 784 -> Dense(hidden_units, relu) ->
    dropout -> Dense(classes, softmax), its weights drawn from `seed` ('normal' in the seed is
    RandomNormal(stddev=0.05)), so that every rank builds the same values."""
    init = lambda k: keras.initializers.RandomNormal(mean=0.0, stddev=0.05, seed=seed + k)  # noqa: E731
    return keras.Sequential([
        keras.Input(shape=input_shape),
        keras.layers.Dense(hidden_units, activation="relu", kernel_initializer=init(0)),
        seeded_dropout(dropout),
        keras.layers.Dense(classes, activation="softmax", kernel_initializer=init(1)),
    ])


def model_of(spec: Any, keras: Any, seeded_dropout: Callable[..., Any], input_shape: tuple[int, ...], classes: int,
             seed: int) -> Any:
    """The model of `spec` (a `ModelSpec`), uncompiled: its builder's (`model.build`), else the
    seed's MLP; checked to be a model of `keras`."""
    offered = {"keras": keras, "seeded_dropout": seeded_dropout, "seed": seed}
    if spec.build is None:
        return call_builder(seed_mlp, input_shape, classes, {"hidden_units": spec.hidden_units,
                                                             "dropout": spec.dropout}, offered)
    from service.usermodel import load_builder

    model = call_builder(load_builder(spec.build), input_shape, classes, dict(spec.kwargs), offered)
    if not isinstance(model, keras.Model):
        raise BuildError(f"model.build {spec.build} returned {type(model).__name__}, not a {keras.__name__} "
                         "model: build the model with the `keras` the builder is given")
    return model


def seeded_dropout_layers(model: Any, kind: type) -> list:
    """The model's layers of class `kind` (its seeded dropout), nested models included, in order."""
    found = []
    for layer in getattr(model, "layers", []):
        if isinstance(layer, kind):
            found.append(layer)
        else:
            found += seeded_dropout_layers(layer, kind)
    return found


def stock_copy(model: Any, keras: Any, seeded: type, learning_rate: float) -> Any:
    """`model` as anyone's `keras` can load it: a stock `Dropout` for each seeded dropout (of class
    `seeded`; the same at inference, where dropout does nothing), every other layer its own, the
    current weights, compiled with the stock loss, Adam at `learning_rate`, and accuracy."""
    def stock(layer: Any) -> Any:
        if isinstance(layer, seeded):
            return keras.layers.Dropout(layer.rate, name=layer.name)
        return layer.__class__.from_config(layer.get_config())

    plain = keras.models.clone_model(model, clone_function=stock)
    plain.set_weights(model.get_weights())
    plain.compile(loss="categorical_crossentropy", optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
                  metrics=["accuracy"])
    return plain


def file_bytes(model: Any) -> bytes:
    """`model` saved as a `.keras` file, as its bytes (rank 0 sends them; the driver writes the file)."""
    import tempfile
    from pathlib import Path

    from service.report.files import MODEL_FILE

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, MODEL_FILE)
        model.save(path)
        return path.read_bytes()
