"""The exported model: OUTPUT/NAME/model.keras, loadable with plain tf_keras.

The trained model uses `StepSeededDropout` (dropout masks keyed on the optimizer step, for exact
resumes), a class only plateau knows. The export is the same network with a stock `Dropout` in
its place (identical at inference, where dropout does nothing) and the final weights, compiled
with the stock loss and metric, so that anyone can load it:

    model = tf_keras.models.load_model("results/seed-reduce-lr/model.keras")
    model.predict(images.reshape(-1, 784) / 255.0)     # input: 784 pixels scaled to [0, 1]

Rank 0 builds the file in its worker and hands its bytes to the driver, which writes it next to
the other output files (a cluster worker's disk is not the driver's).
"""

from __future__ import annotations

import tf_keras as keras

from service.engines.building import file_bytes, stock_copy
from service.engines.tf_keras.model import StepSeededDropout


def keras_file(model: keras.Model) -> bytes:
    """`model`'s current weights in a model of stock layers, as the bytes of a .keras file."""
    return file_bytes(stock_copy(model, keras, StepSeededDropout, float(keras.backend.get_value(model.optimizer.learning_rate))))
