"""The MLflow model of a run's `model.keras`, logged by `service/tracking.py` as an MLflow
"model from code": MLflow copies this file into the logged model and runs it where the model is
loaded, so loading needs MLflow and the Keras that saved the file there (tf_keras, or Keras 3 for
the keras_jax engine's), not plateau.

Never imported by plateau itself (it calls `set_model` at import, as models from code do).

Example::

    model = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    probabilities = model.predict(x_test.reshape(-1, 784).astype("float32") / 255.0)
"""

from __future__ import annotations

import mlflow
from mlflow.pyfunc import PythonModel

KERAS_ARTIFACT = "keras"  # the artifact key of model.keras (service/tracking.py logs it so)


def keras_major(path: str) -> int:
    """The major version of the Keras that saved a `.keras` file (its metadata.json says): 2 for
    the tf_keras engine's files, 3 for the keras_jax engine's."""
    import json
    import zipfile

    with zipfile.ZipFile(path) as archive:
        return int(json.loads(archive.read("metadata.json"))["keras_version"].split(".")[0])


class KerasFile(PythonModel):
    """A stock `.keras` file (tf_keras's, or Keras 3's): features (the seed model's 784 pixels in [0, 1])
    -> the class probabilities."""

    def load_context(self, context) -> None:  # noqa: ANN001 - MLflow's PythonModelContext
        path = context.artifacts[KERAS_ARTIFACT]
        if keras_major(path) >= 3:
            import importlib.util
            import os

            # Keras 3 files load on any backend; JAX's, where it is installed and none was chosen.
            if importlib.util.find_spec("jax") is not None:
                os.environ.setdefault("KERAS_BACKEND", "jax")
            import keras

            self.model = keras.saving.load_model(path, compile=False)
            return
        import tf_keras  # only where the model is loaded: the driver that logs it never imports TensorFlow

        self.model = tf_keras.models.load_model(path, compile=False)

    def predict(self, context, model_input, params=None):  # noqa: ANN001 - MLflow's signature
        import numpy as np

        return self.model.predict(np.asarray(model_input, dtype="float32"), batch_size=4096, verbose=0)


mlflow.models.set_model(KerasFile())
