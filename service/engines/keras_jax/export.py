"""The keras_jax engine's exported model: OUTPUT/NAME/model.keras, a Keras 3 `.keras` file.

The trained model's `SeededDropout` layers (masks keyed on the optimizer's step) become stock
`Dropout` layers, identical at inference; every other layer is the model's own. Rank 0
builds it in its worker and hands its bytes to the driver, which writes it next to the other
output files (a cluster worker's disk is not the driver's).

Example::

    final.model_keras = keras_file(model)
    keras.models.load_model("results/NAME/model.keras")     # with KERAS_BACKEND=jax (or any backend)
"""

from __future__ import annotations

import keras
import numpy as np

from service.engines.building import file_bytes, stock_copy
from service.engines.keras_jax.model import SeededDropout


def keras_file(model: keras.Model) -> bytes:
    """`model`'s current weights in a model of stock layers, as the bytes of a .keras file."""
    return file_bytes(stock_copy(model, keras, SeededDropout, float(np.asarray(model.optimizer.learning_rate))))
