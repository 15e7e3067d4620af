"""Load a run's model.keras with the engine's Keras in a fresh process and score the test images.

    python -m tests.support.programs.score_model ENGINE MODEL.keras DATA
    -> @@{"accuracy": ..., "layers": [...], "keras": "<version>"}
"""

from __future__ import annotations

import os
import sys


def main(engine: str, path: str, data: str) -> None:
    if engine == "keras_jax":  # Keras 3 reads KERAS_BACKEND when it is first imported
        os.environ["KERAS_BACKEND"] = "jax"
        import keras
    else:
        import tf_keras as keras
    from service import data as data_lib
    from tests.support.project import say_json

    splits = data_lib.load(data, "holdout", warn=lambda m: None)
    model = keras.models.load_model(path)
    probs = model.predict(splits.x_test.astype("float32") / 255.0, batch_size=4096, verbose=0)
    say_json({"accuracy": float((probs.argmax(axis=1) == splits.y_test).mean()),
              "layers": [type(layer).__name__ for layer in model.layers], "keras": keras.__version__})


if __name__ == "__main__":
    main(*sys.argv[1:4])
