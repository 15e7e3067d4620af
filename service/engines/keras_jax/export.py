"""The keras_jax engine's exported model: OUTPUT/NAME/model.keras, a Keras 3 `.keras` file.

The trained model is already a stock Keras 3 Sequential, so the file is the model itself. Rank 0
builds it in its worker and hands its bytes to the driver, which writes it next to the other
output files (a cluster worker's disk is not the driver's).

Example::

    final.model_keras = keras_file(model)
    keras.models.load_model("results/NAME/model.keras")     # with KERAS_BACKEND=jax (or any backend)
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from service.report import MODEL_FILE


def keras_file(model: object) -> bytes:
    """The model as the bytes of a Keras 3 .keras file (stock layers: anyone can load it)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, MODEL_FILE)
        model.save(path)
        return path.read_bytes()
