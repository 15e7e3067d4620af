"""The engines: one module chooses (`service/engines/__init__.py`); an engine that is not installed, or that
cannot do what the spec asks, is one line before anything starts; the keras_jax engine's maths on
real JAX (no Ray: several CPU devices in one process stand in for the ranks).

The guarantees on a real run of each engine are in test_train.py (parametrised over both).
"""

from __future__ import annotations

import sys

import pytest

from service import engines
from service.spec import SpecError, apply_overrides, validate_train
from tests.support.engines import NEEDS_JAX
from tests.support.limits import COMMAND_S
from tests.support.project import program, program_json


def spec_with(*overrides: str):
    return validate_train(apply_overrides({}, list(overrides)))


@NEEDS_JAX
def test_tf_keras_is_the_default_and_each_engine_names_its_worker_backend_and_environment():
    assert spec_with().training.engine == "tf_keras"
    tf = engines.engine_for(spec_with())
    assert (tf.worker_path, tf.backend_path) == ("service.engines.tf_keras.worker:Worker",
                                               "service.engines.tf_keras.backend:TensorflowWorkers")
    base = {"env_vars": {"RAY_DEDUP_LOGS": "0"}}
    assert tf.runtime_env(base)["env_vars"] == {"RAY_DEDUP_LOGS": "0", "TF_USE_LEGACY_KERAS": "1"}
    jax = engines.engine_for(spec_with("training.engine=keras_jax"))
    assert (jax.worker_path, jax.backend_path) == ("service.engines.keras_jax.worker:Worker",
                                                 "service.engines.keras_jax.backend:JaxWorkers")
    assert jax.runtime_env(base)["env_vars"] == {"RAY_DEDUP_LOGS": "0", "KERAS_BACKEND": "jax"}
    assert type(jax.backend_config()).__name__ == "JaxWorkers"


def test_an_unknown_engine_is_a_spec_error_and_keras_jax_takes_gpus():
    with pytest.raises(SpecError, match=r"training.engine: use 'tf_keras' or 'keras_jax' \(got 'torch'\)"):
        spec_with("training.engine=torch")
    assert spec_with("training.engine=keras_jax", "scaling.use_gpu=true").scaling.resources_per_worker == {
        "CPU": 1.0, "GPU": 1.0}


@pytest.mark.parametrize("command", ["train", "check", "compare"])
def test_keras_jax_without_jax_installed_is_one_line_and_exit_2(tmp_path, command):
    """The CLI as installed, except that JAX cannot be found (programs/without_jax.py): a machine without the extra."""
    spec = "jobs/seed-comparison.yaml" if command == "compare" else "jobs/seed-reduce-lr.yaml"
    done = program("without_jax", command, spec, "--data", "sample", "--set", "training.engine=keras_jax",
                   "--output", str(tmp_path / "out"), timeout=COMMAND_S)
    assert done.returncode == 2, done.stdout + done.stderr
    python = " (on Python 3.11 or newer)" if sys.version_info < (3, 11) else ""  # where the extra installs nothing
    assert done.stderr.splitlines()[-1] == ('plateau: training.engine keras_jax: jax, jaxlib not installed; '
                                            f'pip install -e ".[jax]"{python}, or train with training.engine: tf_keras')
    assert [ln for ln in done.stderr.splitlines() if ln.startswith("plateau:")] == done.stderr.splitlines()[-1:]
    assert not (tmp_path / "out").exists()  # nothing started, nothing written


@NEEDS_JAX
@pytest.mark.slow  # a JAX process each (no Ray): ~12 s
@pytest.mark.parametrize("workers", [2, 3])
def test_keras_jax_epoch_at_n_ranks_is_the_single_rank_epoch(workers):
    """Any split of the global batch (200 over 3: 67/67/66) trains the single-process epoch: the
    same batches, the same dropout masks (drawn for the global batch), the gradient of the global
    mean; up to float rounding of the sums' order."""
    result = program_json("split_epoch", str(workers))
    assert result["gradient"] < 1e-5, result
    assert result["loss"] < 1e-5, result
    assert result["correct"][0] == result["correct"][1], result


@pytest.mark.parametrize("name", sorted(engines.ENGINES))
def test_every_engine_implements_the_whole_worker_contract_and_runs_the_one_loop(name):
    import importlib

    from service.engines import contract

    module, _, cls = engines.ENGINES[name].worker_path.partition(":")
    worker = getattr(importlib.import_module(module), cls)  # the class only: no framework is imported yet
    assert issubclass(worker, contract.EngineWorker)
    assert not worker.__abstractmethods__
    assert not hasattr(importlib.import_module(module), "train_loop_per_worker")  # one loop, loop.py's


def test_the_tf_keras_engine_declares_every_shared_callback_on_tf_keras():
    import tf_keras

    from service.core import callbacks as shared
    from service.engines import contract
    from service.engines.tf_keras import callbacks, collective

    assert isinstance(collective.Collective(), contract.Collective)
    declared = callbacks.CALLBACKS
    for base in [*shared.SHARED, *(cls for cls, _ in shared.STOCK)]:
        made = getattr(declared, base.__name__)
        assert issubclass(made, base) and issubclass(made, tf_keras.callbacks.Callback)
    assert issubclass(declared.ResumableEarlyStopping, tf_keras.callbacks.EarlyStopping)
    assert declared.kinds.consensus is declared.Consensus

