"""One collective per training step: what two MultiWorkerMirroredStrategy processes trace.

Two plain processes (no Ray: the strategy only needs TF_CONFIG) build the worker's model,
strategy and training dataset exactly as `service.worker` does, train one epoch on the sample,
and count the collective ops in the traced training step. Stock tf_keras traces eight per step
(the gradients, four reads of the metrics' totals, two sums of the logged values, and the
partial-batch "is there a batch" flag); plateau's step must trace one: the gradients.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

RANK = r"""
import collections, json, os, sys
import tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)
from service import data as data_lib
from service.model import BatchSplit, build_model
from service.spec import ModelSpec
from service.worker import make_strategy, per_replica, train_dataset

rank, world = int(sys.argv[1]), 2
splits = data_lib.load("sample", "holdout")
x, y = splits.x_train[:2000], splits.y_train[:2000]
split = BatchSplit.of(200, world)
strategy = make_strategy(world)
with strategy.scope():
    model = build_model(ModelSpec(), seed=7, split=split, steps_per_execution=5)
rows = slice(split.offsets[rank], split.offsets[rank] + split.sizes[rank])
dataset = train_dataset(x, y, steps=10, rows=rows, global_batch=200, seed=7, start_epoch=0, epochs=1)
model.fit(per_replica(strategy, dataset, world), epochs=1, steps_per_epoch=10, verbose=0)
counts = []
for function in model.train_function._list_all_concrete_functions():
    library = function.graph.as_graph_def().library.function
    for body in library:
        if body.signature.name.startswith("while_body"):
            counts.append(sum(1 for node in body.node_def if node.op.startswith("Collective")))
print("COUNTS " + json.dumps({"rank": rank, "per_step": counts,
                              "loss": float(model.get_metrics_result()["loss"])}), flush=True)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_a_training_step_runs_one_collective_the_gradients():
    ports = [_free_port(), _free_port()]
    procs = []
    for rank in range(2):
        tf_config = {"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]}, "task": {"type": "worker", "index": rank}}
        env = {**os.environ, "TF_CONFIG": json.dumps(tf_config), "TF_CPP_MIN_LOG_LEVEL": "3",
               "TF_USE_LEGACY_KERAS": "1", "PYTHONPATH": str(ROOT)}
        procs.append(subprocess.Popen([sys.executable, "-c", RANK, str(rank)], env=env, cwd=ROOT,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out[-3000:]
        results.append(json.loads(out.split("COUNTS ", 1)[1].splitlines()[0]))
    for result in results:
        # The multi-step training loop's body is one step; it holds the step's collectives.
        assert result["per_step"] and set(result["per_step"]) == {1}, result
    # Both ranks read the same epoch values: the metrics' totals over both replicas.
    assert results[0]["loss"] == results[1]["loss"]
