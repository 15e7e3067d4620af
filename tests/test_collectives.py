"""One collective per training step: what two MultiWorkerMirroredStrategy processes trace.

Two plain processes (no Ray: the strategy only needs TF_CONFIG) build the worker's model,
strategy and training dataset exactly as `service.engines.tf_keras.worker` does, train one epoch on the sample,
and count the collective ops in the traced training step. Stock tf_keras traces eight per step
(the gradients, four reads of the metrics' totals, two sums of the logged values, and the
partial-batch "is there a batch" flag); plateau's step must trace one: the gradients.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support.cluster import free_port
from tests.support.limits import PROGRAM_S
from tests.support.project import PROJECT_ROOT, python_env


@pytest.mark.slow
def test_a_training_step_runs_one_collective_the_gradients():
    """Each rank runs tests/support/programs/collective_rank.py."""
    ports = [free_port(), free_port()]
    procs = []
    for rank in range(2):
        tf_config = {"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]}, "task": {"type": "worker", "index": rank}}
        env = python_env(TF_CONFIG=json.dumps(tf_config), TF_CPP_MIN_LOG_LEVEL="3", TF_USE_LEGACY_KERAS="1")
        procs.append(subprocess.Popen([sys.executable, "-m", "tests.support.programs.collective_rank", str(rank)],
                                      env=env, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=PROGRAM_S)
        assert proc.returncode == 0, out[-3000:]
        results.append(json.loads(out.rsplit("@@", 1)[1]))
    for result in results:
        # The multi-step training loop's body is one step; it holds the step's collectives.
        assert result["per_step"] and set(result["per_step"]) == {1}, result
    # Both ranks read the same epoch values: the metrics' totals over both replicas.
    assert results[0]["loss"] == results[1]["loss"]
