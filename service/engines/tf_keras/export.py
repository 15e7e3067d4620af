"""The exported model: OUTPUT/NAME/model.keras, loadable with plain tf_keras.

The trained model uses `StepSeededDropout` (dropout masks keyed on the optimizer step, for exact
resumes), a class only plateau knows. The export is the same network built from stock layers
(Dense, Dropout, Dense; identical at inference, where dropout does nothing) with the final
weights, compiled with the seed's loss and metric, so that anyone can load it:

    model = tf_keras.models.load_model("results/seed-reduce-lr/model.keras")
    model.predict(images.reshape(-1, 784) / 255.0)     # input: 784 pixels scaled to [0, 1]

Rank 0 builds the file in its worker and hands its bytes to the driver, which writes it next to
the other output files (a cluster worker's disk is not the driver's).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import tf_keras as keras

from service.report import MODEL_FILE
from service.spec import ModelSpec


def plain_model(spec: ModelSpec, learning_rate: float) -> keras.Model:
    """The seed's network from stock tf_keras layers, compiled."""
    model = keras.Sequential([
        keras.Input(shape=(784,)),
        keras.layers.Dense(spec.hidden_units, activation="relu"),
        keras.layers.Dropout(spec.dropout),
        keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile(loss="categorical_crossentropy", optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
                  metrics=["accuracy"])
    return model


def keras_file(model: keras.Model, spec: ModelSpec) -> bytes:
    """`model`'s current weights in a stock model, as the bytes of a .keras file."""
    rate = float(keras.backend.get_value(model.optimizer.learning_rate))
    plain = plain_model(spec, rate)
    plain.set_weights(model.get_weights())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, MODEL_FILE)
        plain.save(path)
        return path.read_bytes()
