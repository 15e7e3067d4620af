"""The MLflow model of a run's `model.keras`, logged by `service/tracking.py` as an MLflow
"model from code": MLflow copies this file into the logged model and runs it where the model is
loaded, so loading needs MLflow and tf_keras there, not plateau.

Never imported by plateau itself (it calls `set_model` at import, as models from code do).

Example::

    model = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    probabilities = model.predict(x_test.reshape(-1, 784).astype("float32") / 255.0)
"""

from __future__ import annotations

import mlflow
from mlflow.pyfunc import PythonModel

KERAS_ARTIFACT = "keras"  # the artifact key of model.keras (service/tracking.py logs it so)


class KerasFile(PythonModel):
    """A stock tf_keras `.keras` file: 784 pixels in [0, 1] -> the 10 class probabilities."""

    def load_context(self, context) -> None:  # noqa: ANN001 - MLflow's PythonModelContext
        import tf_keras  # only where the model is loaded: the driver that logs it never imports TensorFlow

        self.model = tf_keras.models.load_model(context.artifacts[KERAS_ARTIFACT], compile=False)

    def predict(self, context, model_input, params=None):  # noqa: ANN001 - MLflow's signature
        import numpy as np

        return self.model.predict(np.asarray(model_input, dtype="float32"), batch_size=4096, verbose=0)


mlflow.models.set_model(KerasFile())
