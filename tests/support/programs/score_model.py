"""Load a run's model.keras with the engine's Keras in a fresh process and score the test images.

    python -m tests.support.programs.score_model ENGINE MODEL.keras DATA [SPEC.yaml]
    -> @@{"accuracy": ..., "layers": [...], "keras": "<version>"}

With the run's spec, the data is read as that run read it (its model's layout, its validation).
"""

from __future__ import annotations

import os
import sys


def main(engine: str, path: str, data: str, spec_file: str = "") -> None:
    if engine == "keras_jax":  # Keras 3 reads KERAS_BACKEND when it is first imported
        os.environ["KERAS_BACKEND"] = "jax"
        import keras
    else:
        import tf_keras as keras
    from service import data as data_lib
    from tests.support.project import say_json

    from service.spec import load_spec

    if spec_file:
        spec = load_spec(spec_file)
        splits = data_lib.load(data, spec.data.validation, warn=lambda m: None, layout=data_lib.Layout.of(spec))
    else:
        splits = data_lib.load(data, "holdout", warn=lambda m: None)
    model = keras.models.load_model(path)
    x = splits.x_test.astype("float32")
    probs = model.predict(x / 255.0 if splits.x_test.dtype.name == "uint8" else x, batch_size=4096, verbose=0)
    say_json({"accuracy": float((probs.argmax(axis=1) == splits.y_test).mean()),
              "layers": [type(layer).__name__ for layer in model.layers], "keras": keras.__version__})


if __name__ == "__main__":
    main(*sys.argv[1:5])
