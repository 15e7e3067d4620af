"""The compat modules: every private part of Ray, TensorFlow, tf_keras and Keras 3 that plateau
touches, and every MLflow setting it relies on by name, still exists with the shape plateau uses.
An upgrade that removes or renames one fails here, naming it. Fast: nothing starts Ray, and Keras 3
is read as source, not imported.
"""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path

import pytest

from service.compat import keras as compat_keras
from service.compat import mlflow as compat_mlflow
from service.compat import ray as compat_ray
from service.compat import tensorflow as compat_tf


def parameters(function) -> list[str]:
    return list(inspect.signature(function).parameters)


def test_ray_still_prints_a_drivers_lines_through_the_function_plateau_replaces():
    import ray._private.worker as ray_worker

    assert parameters(ray_worker.print_worker_logs)[:3] == ["data", "print_file", "ignore_prefix"]
    assert parameters(ray_worker.filter_autoscaler_events) == ["lines"]
    assert compat_ray.log_printer() is ray_worker.print_worker_logs
    assert compat_ray.autoscaler_events() is ray_worker.filter_autoscaler_events


def test_ray_still_has_the_address_helpers_both_backends_use():
    from ray._common.network_utils import build_address
    from ray.train._internal.utils import get_address_and_port

    assert parameters(build_address) == ["host", "port"] and parameters(get_address_and_port) == []
    assert compat_ray.build_address("10.0.0.5", 41237) == "10.0.0.5:41237"


def test_ray_train_still_reads_the_poll_setting_and_writes_the_snapshot_plateau_rewrites():
    from ray.train.v2._internal import constants
    from ray.train.v2._internal.execution.checkpoint.checkpoint_manager import _CheckpointManagerState
    from ray.train.v2._internal.execution.context import TrainRunContext  # noqa: F401 - the type name

    assert constants.HEALTH_CHECK_INTERVAL_S_ENV_VAR == compat_ray.REPORT_POLL_VAR
    assert constants.CHECKPOINT_MANAGER_SNAPSHOT_FILENAME == compat_ray.SNAPSHOT_FILE
    fields = _CheckpointManagerState.model_fields
    assert set(compat_ray.SNAPSHOT_FIELDS) <= set(fields), set(compat_ray.SNAPSHOT_FIELDS) - set(fields)


def test_rays_job_client_still_has_the_request_method_and_headers_plateau_uses():
    from ray.job_submission import JobSubmissionClient

    assert parameters(JobSubmissionClient._do_request)[:3] == ["self", "method", "endpoint"]
    assert "self._headers" in inspect.getsource(JobSubmissionClient.__mro__[1])
    client = compat_ray.timely_job_client(lambda method: (1.0, 2.0))
    assert issubclass(client, JobSubmissionClient) and "_do_request" in vars(client)
    assert compat_ray.client_headers(type("Client", (), {"_headers": None})()) == {}
    for name in compat_ray.QUIET_LOGGERS:
        assert importlib.util.find_spec(name) is not None, name


def test_tensorflow_still_builds_per_device_pipelines_with_the_function_plateau_replaces():
    from tensorflow.python.data.ops import multi_device_iterator_ops as devices

    assert callable(devices._create_device_dataset)
    assert "_create_device_dataset" in inspect.getsource(devices.MultiDeviceIterator)


def test_tf_keras_still_has_the_conversion_and_model_hooks_the_engine_uses():
    import tf_keras
    from tf_keras.src.utils import tf_utils

    assert callable(tf_utils.sync_to_numpy_or_python_type)
    assert compat_tf.sync_to_numpy_or_python_type({"a": 1}) == {"a": 1}
    for name in compat_tf.MODEL_HOOKS:
        assert callable(getattr(tf_keras.Model, name, None)), name
    assert parameters(tf_keras.Model._validate_and_get_metrics_result) == ["self", "logs"]


def test_keras_3s_adam_still_keeps_its_moments_under_the_names_the_checkpoint_reads():
    spec = importlib.util.find_spec("keras")
    if spec is None:
        pytest.skip("Keras 3 (the jax extra) is not installed: the keras_jax engine cannot run here either")
    source = (Path(spec.origin).parent / "src" / "optimizers" / "adam.py").read_text()
    for name in compat_keras.ADAM_SLOTS:
        assert f"self.{name}" in source, name


def test_mlflow_still_reads_the_settings_plateau_gives_it():
    import mlflow.environment_variables as settings
    from mlflow.protos import databricks_pb2

    for name in [*compat_mlflow.DRIVER_SETTINGS, compat_mlflow.TRACKING_URI_VAR]:
        assert getattr(settings, name).name == name
    assert databricks_pb2.ErrorCode.Name(databricks_pb2.RESOURCE_DOES_NOT_EXIST) == compat_mlflow.NOT_FOUND
