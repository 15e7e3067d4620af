"""The compat modules: every private part of Ray, TensorFlow, tf_keras and Keras 3 that plateau
touches, and every MLflow setting it relies on by name, still exists with the shape plateau uses.
An upgrade that removes or renames one fails here, naming it. And no module outside
`service/compat/` touches one: an `ast` scan of every other module of `service/` for private
imports, private attributes of the libraries' modules and objects, private overrides and the
libraries' environment settings. Fast: nothing starts Ray, and Keras 3 is read as source, not
imported.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import os
import re
import warnings
from pathlib import Path
from typing import Optional

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


# ---------------------------------------------------------------------------------------------
# Ray Train's record of a run (checkpoints/resume.py reads and rewrites it through compat)


def ray_record(names_by_epoch: dict[int, str]) -> str:
    """Ray Train's own snapshot of these checkpoints, the last one latest."""
    from ray.train.v2._internal.execution.checkpoint.checkpoint_manager import (_CheckpointManagerState,
                                                                                 _TrainingResultState)

    results = [_TrainingResultState(checkpoint_dir_name=n, metrics={"epoch": e}) for e, n in sorted(names_by_epoch.items())]
    return _CheckpointManagerState(
        checkpoint_results=results, checkpoint_report_indices=[e - 1 for e in sorted(names_by_epoch)],
        latest_checkpoint_result=results[-1], pending_training_results=[], pending_validation_specs=[],
        current_report_index=max(names_by_epoch), validated_checkpoint_dir_names=[names_by_epoch[3]],
        timed_out_validation_checkpoint_dir_names=[], failed_validation_checkpoint_dir_names=[]).model_dump_json()


def test_ray_trains_record_reads_and_rewrites_as_ray_train_reads_it(tmp_path):
    from ray.train.v2._internal.execution.checkpoint.checkpoint_manager import _CheckpointManagerState

    assert compat_ray.read_snapshot(tmp_path) is None
    (tmp_path / compat_ray.SNAPSHOT_FILE).write_text(ray_record({2: "checkpoint_b", 3: "checkpoint_c"}))
    snapshot = compat_ray.read_snapshot(tmp_path)
    assert compat_ray.kept_checkpoints(snapshot) == [("checkpoint_b", {"epoch": 2}), ("checkpoint_c", {"epoch": 3})]
    assert compat_ray.latest_checkpoint(snapshot) == ("checkpoint_c", {"epoch": 3})
    compat_ray.drop_from_snapshot(tmp_path, {"checkpoint_c"}, "checkpoint_b")
    state = _CheckpointManagerState.model_validate_json((tmp_path / compat_ray.SNAPSHOT_FILE).read_text())
    assert state.latest_checkpoint_result.checkpoint_dir_name == "checkpoint_b"
    assert [r.checkpoint_dir_name for r in state.checkpoint_results] == ["checkpoint_b"]
    assert state.checkpoint_report_indices == [1] and state.validated_checkpoint_dir_names == []


def test_ray_train_still_resumes_from_its_records_latest_and_refuses_the_public_argument():
    """Why the record is rewritten (compat/ray.py): if a Ray upgrade lets a trainer take the
    checkpoint to resume from, or picks it otherwise, this fails and the rewrite can go."""
    import ray.train
    from ray.train.v2._internal.execution.checkpoint.checkpoint_manager import CheckpointManager
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    with pytest.raises(DeprecationWarning, match="resume_from_checkpoint"):
        DataParallelTrainer(lambda: None, resume_from_checkpoint=ray.train.Checkpoint("/nowhere"))
    assert "self.latest_checkpoint_result" in inspect.getsource(CheckpointManager.before_init_train_context)
    assert "_assert_checkpoints_exist" in inspect.getsource(CheckpointManager._load_state)
    assert "checkpoint_manager_snapshot_path" in inspect.getsource(CheckpointManager._maybe_load_state_from_storage)


def test_report_polling_is_set_for_the_session_only_and_a_users_setting_wins(monkeypatch):
    monkeypatch.delenv(compat_ray.REPORT_POLL_VAR, raising=False)
    with compat_ray.report_polling("0.2"):
        assert os.environ[compat_ray.REPORT_POLL_VAR] == "0.2"
    assert compat_ray.REPORT_POLL_VAR not in os.environ
    monkeypatch.setenv(compat_ray.REPORT_POLL_VAR, "5")
    with compat_ray.report_polling("0.2"):
        assert os.environ[compat_ray.REPORT_POLL_VAR] == "5"
    assert os.environ[compat_ray.REPORT_POLL_VAR] == "5"


def test_mlflows_driver_settings_end_with_the_command(monkeypatch):
    for name in compat_mlflow.DRIVER_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")  # the user's own
    with compat_mlflow.settings_restored():
        compat_mlflow.driver_settings()
        assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "0" and os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "60"
    assert not [name for name in compat_mlflow.DRIVER_SETTINGS if name in os.environ and name != "MLFLOW_HTTP_REQUEST_TIMEOUT"]
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "60"


def test_the_cli_puts_pythons_warning_format_back(tmp_path):
    from service import cli

    before = warnings.formatwarning
    assert cli.main(["runs", str(tmp_path)]) == 0
    assert warnings.formatwarning is before


def test_tf_keras_still_checks_a_steps_target_and_loss_where_the_engine_calls_it():
    import tf_keras

    assert parameters(tf_keras.Model._validate_target_and_loss) == ["self", "y", "loss"]
    model = tf_keras.Sequential([tf_keras.layers.Dense(1)])
    model.compile(loss="mse")
    compat_tf.validate_target_and_loss(model, [1.0], 0.5)
    with pytest.raises(ValueError, match="[Tt]arget data is missing"):  # tf_keras's own error
        compat_tf.validate_target_and_loss(model, None, 0.5)


# ---------------------------------------------------------------------------------------------
# Private parts only here


LIBRARIES = ("ray", "tensorflow", "tf_keras", "keras", "mlflow", "jax")
# Library modules that are private without an underscore: Keras's sources, TensorFlow's internals.
PRIVATE_MODULES = ("tf_keras.src", "keras.src", "tensorflow.python")
# Private names of the libraries wherever they are reached (an object's, not only a module's).
PRIVATE_NAMES = ("_do_request", "_headers", "_create_device_dataset", "print_worker_logs",
                 "filter_autoscaler_events", "_momentums", "_velocities", "_validate_target_and_loss")
# Environment variables that are the libraries' own settings: set only through a compat module.
LIBRARY_SETTINGS = re.compile(r"MLFLOW_[A-Z0-9_]+|RAY_TRAIN_HEALTH_CHECK_INTERVAL_S")
SERVICE = Path(__file__).resolve().parents[1] / "service"


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _private_module(module: str) -> bool:
    return (module.split(".")[0] in LIBRARIES
            and (any(_private(part) for part in module.split(".")) or module.startswith(PRIVATE_MODULES)))


def _root(node: ast.AST) -> Optional[str]:
    while isinstance(node, (ast.Attribute, ast.Call, ast.Subscript)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


def private_touches(source: str) -> list[str]:
    """Every touch of a library's private part in `source`, as `line: what`."""
    tree = ast.parse(source)
    found: list[str] = []
    library_names: set[str] = set()  # names bound to a library's module or object
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in LIBRARIES:
                    library_names.add(alias.asname or alias.name.split(".")[0])
                if _private_module(alias.name):
                    found.append(f"{node.lineno}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in LIBRARIES:
            library_names.update(alias.asname or alias.name for alias in node.names)
            if _private_module(node.module) or any(_private(alias.name) for alias in node.names):
                found.append(f"{node.lineno}: from {node.module} import {', '.join(a.name for a in node.names)}")
    model_hooks = set(compat_tf.MODEL_HOOKS)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            if node.attr in PRIVATE_NAMES or (_private(node.attr) and _root(node) in library_names):
                found.append(f"{node.lineno}: .{node.attr}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "setattr"):
            named = node.args[1] if len(node.args) > 1 else None
            if isinstance(named, ast.Constant) and isinstance(named.value, str) and (
                    named.value in PRIVATE_NAMES or (_private(named.value) and _root(node.args[0]) in library_names)):
                found.append(f"{node.lineno}: {node.func.id}(..., {named.value!r})")
        elif isinstance(node, ast.ClassDef) and any(_root(base) in library_names for base in node.bases):
            # A library's subclass: a private method it defines and never calls itself is there
            # for the library to call, an override of the library's private hook.
            own = {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute) and _root(n) == "self"}
            for item in node.body:
                if (isinstance(item, ast.FunctionDef) and _private(item.name) and item.name not in own
                        and item.name not in model_hooks):
                    found.append(f"{item.lineno}: def {item.name} overrides a library's private method")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and LIBRARY_SETTINGS.fullmatch(node.value):
            found.append(f"{node.lineno}: {node.value!r}")
    return found


def test_the_scan_finds_each_kind_of_private_touch():
    source = '''
import ray._private.worker
from ray.train.v2._internal.execution.context import TrainRunContext
from tf_keras.src.utils import tf_utils
import tensorflow as tf
import tf_keras as keras
from ray.job_submission import JobSubmissionClient
from mlflow import _private_name
tf.data._options
client._do_request("GET", "/")
JobSubmissionClient._headers
getattr(tf, "_private")
devices._create_device_dataset = None
worker.print_worker_logs = print
os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = "0.2"
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
class Model(keras.Sequential):
    def _hook(self): ...
    def _validate_and_get_metrics_result(self, logs): ...
    def _tally(self): ...
    def step(self): self._tally()
'''
    found = private_touches(source)
    assert sorted(int(line.split(":")[0]) for line in found) == [2, 3, 4, *range(8, 17), 18], found
    assert private_touches("import ray\nray.init()\nself._mine = 1\nos.environ['PLATEAU_X'] = '1'\n"
                           "'see MLFLOW_TRACKING_URI'\n") == []


def test_only_the_compat_modules_touch_a_librarys_private_parts():
    compat = SERVICE / "compat"
    found = {str(path.relative_to(SERVICE.parent)): touches
             for path in sorted(SERVICE.rglob("*.py")) if compat not in path.parents
             for touches in [private_touches(path.read_text())] if touches}
    assert found == {}
