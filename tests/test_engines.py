"""The engines: one module chooses (`service/engines.py`); an engine that is not installed, or that
cannot do what the spec asks, is one line before anything starts; the keras_jax engine's maths on
real JAX (no Ray: several CPU devices in one process stand in for the ranks).

The guarantees on a real run of each engine are in test_train.py (parametrised over both).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from service import engines
from service.spec import SpecError, apply_overrides, validate_train
from tests.helpers import NEEDS_JAX

ROOT = Path(__file__).resolve().parent.parent


def spec_with(*overrides: str):
    return validate_train(apply_overrides({}, list(overrides)))


@NEEDS_JAX
def test_tf_keras_is_the_default_and_each_engine_names_its_loop_backend_and_environment():
    assert spec_with().training.engine == "tf_keras"
    tf = engines.engine_for(spec_with())
    assert (tf.loop_path, tf.backend_path) == ("service.worker:train_loop_per_worker", "service.backend:TensorflowWorkers")
    base = {"env_vars": {"TF_USE_LEGACY_KERAS": "1"}}
    assert tf.runtime_env(base) == base
    jax = engines.engine_for(spec_with("training.engine=keras_jax"))
    assert jax.backend_path == "service.keras_jax.backend:JaxWorkers"
    assert jax.runtime_env(base)["env_vars"] == {"TF_USE_LEGACY_KERAS": "1", "KERAS_BACKEND": "jax"}
    assert type(jax.backend_config()).__name__ == "JaxWorkers"


def test_an_unknown_engine_is_a_spec_error_and_keras_jax_takes_gpus():
    with pytest.raises(SpecError, match=r"training.engine: use 'tf_keras' or 'keras_jax' \(got 'torch'\)"):
        spec_with("training.engine=torch")
    assert spec_with("training.engine=keras_jax", "scaling.use_gpu=true").scaling.resources_per_worker == {
        "CPU": 1.0, "GPU": 1.0}


# Runs the CLI as installed, except that JAX cannot be found: what a machine without the extra sees.
WITHOUT_JAX = """
import sys

class NoJax:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("jax", "jaxlib"):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None

sys.meta_path.insert(0, NoJax())
from service.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("command", ["train", "check", "compare"])
def test_keras_jax_without_jax_installed_is_one_line_and_exit_2(tmp_path, command):
    spec = "jobs/seed-comparison.yaml" if command == "compare" else "jobs/seed-reduce-lr.yaml"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", WITHOUT_JAX, command, spec, "--data", "sample",
                           "--set", "training.engine=keras_jax", "--output", str(tmp_path / "out")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    python = " (on Python 3.11 or newer)" if sys.version_info < (3, 11) else ""  # where the extra installs nothing
    assert done.stderr.splitlines()[-1] == ('plateau: training.engine keras_jax: jax, jaxlib not installed; '
                                            f'pip install -e ".[jax]"{python}, or train with training.engine: tf_keras')
    assert [ln for ln in done.stderr.splitlines() if ln.startswith("plateau:")] == done.stderr.splitlines()[-1:]
    assert not (tmp_path / "out").exists()  # nothing started, nothing written


# One epoch of the keras_jax engine's jitted maths with the global batch of 200 split over N ranks
# (N CPU devices in one process), against the same epoch in one rank.
SPLIT_EPOCH = r"""
import json, os, sys
workers = int(sys.argv[1])
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={workers}"
os.environ["KERAS_BACKEND"] = "jax"
import jax, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from service import data as data_lib
from service.keras_jax import model as jm
from service.spec import ModelSpec

splits = data_lib.load("sample", "test", warn=lambda m: None)
x, y = splits.x_train[:1000], splits.y_train[:1000]
batches = jm.epoch_order(7, 0, len(x), 5, 200)[:1]  # one step: Adam's first update is lr x sign(gradient)

def train(ranks):
    model = jm.build_model(ModelSpec(), seed=7)
    mesh = Mesh(np.array(jax.devices()[:ranks]), (jm.AXIS,))
    split = data_lib.BatchSplit.of(200, ranks)
    epoch = jm.Epoch(model, mesh, split, 0, seed=7, dropout=0.5)
    # Every rank's rows, as each process would hand over its own (one process holds them all here).
    parts = [jm.rank_rows(batches, split, r) for r in range(ranks)]
    idx = np.concatenate([p[0] for p in parts], axis=1)
    weight = np.concatenate([p[1] for p in parts], axis=1)
    first = np.array(split.offsets, np.int32)
    put = lambda a, spec: jax.device_put(a, NamedSharding(mesh, spec))
    variables = [put(np.asarray(v.value), P()) for v in model.trainable_variables]
    state = [put(np.asarray(v.value), P()) for v in model.optimizer.variables]
    weights, state, sums = epoch._run(variables, state, put(x[idx], P(None, jm.AXIS)),
                                      put(y[idx].astype(np.int32), P(None, jm.AXIS)), put(weight, P(None, jm.AXIS)),
                                      put(first, P(jm.AXIS)))
    # Adam's first moment after one step is 0.1 x the gradient.
    moments = [i for i, v in enumerate(model.optimizer.variables) if any(v is m for m in model.optimizer._momentums)]
    return [np.asarray(state[i]) for i in moments], np.asarray(sums, np.float64).sum(axis=0)

one, one_sums = train(1)
many, many_sums = train(workers)
print("@@" + json.dumps({
    "gradient": max(float(np.max(np.abs(p - q)) / np.max(np.abs(q))) for p, q in zip(many, one)),
    "loss": abs(float(many_sums[0] - one_sums[0])) / float(one_sums[0]),
    "correct": [float(one_sums[1]), float(many_sums[1])],
}))
"""


@NEEDS_JAX
@pytest.mark.slow  # a JAX process each (no Ray): ~12 s
@pytest.mark.parametrize("workers", [2, 3])
def test_keras_jax_epoch_at_n_ranks_is_the_single_rank_epoch(workers):
    """Any split of the global batch (200 over 3: 67/67/66) trains the single-process epoch: the
    same batches, the same dropout masks (drawn for the global batch), the gradient of the global
    mean; up to float rounding of the sums' order."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", SPLIT_EPOCH, str(workers)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert "@@" in done.stdout, done.stderr[-3000:]
    result = json.loads(done.stdout.rsplit("@@", 1)[1])
    assert result["gradient"] < 1e-5, result
    assert result["loss"] < 1e-5, result
    assert result["correct"][0] == result["correct"][1], result


@NEEDS_JAX
@pytest.mark.slow
def test_keras_jax_killed_worker_restarts_in_fresh_processes_and_resumes_to_the_run_that_never_failed(tmp_path):
    """Rank 1's process dies after epoch 3's report; Ray Train starts a new worker group (fresh
    processes, a new JAX coordinator), which resumes from the checkpoint: weights, Adam, the
    learning rate and the deciders' state. Same batches (epoch-keyed order), same dropout masks
    (step-keyed): the result is bit-identical to the run that never failed, and no 90-s wait."""
    import time

    from service import train
    from tests.helpers import DECIDING, make_spec, without_seconds

    reference = train.run(make_spec(tmp_path / "reference", *DECIDING, "training.engine=keras_jax", name="ft"),
                          echo=lambda line: None)
    assert reference.ok, reference.error
    assert any(d["reduced"] for d in reference.decisions), "no LR reduction: retune DECIDING"
    spec = make_spec(tmp_path / "failed", *DECIDING, "training.engine=keras_jax", "debug.fail_at_epoch=3",
                     "debug.fail_rank=1", "scaling.max_failures=1", name="ft")
    started, lines = time.monotonic(), []
    result = train.run(spec, echo=lines.append)
    took = time.monotonic() - started
    assert result.ok, result.error
    assert len([ln for ln in lines if ln.startswith("workers: ")]) == 2, lines  # a second worker group started
    assert took < 85, took  # the survivor did not wait for JAX's heartbeat timeout
    assert without_seconds(result.history) == without_seconds(reference.history)
    assert result.decisions == reference.decisions
    assert result.summary["test_accuracy"] == reference.summary["test_accuracy"]
    assert result.summary["lr_reductions"] == reference.summary["lr_reductions"]
