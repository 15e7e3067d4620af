"""Scaling decisions that need no cluster: the collective each run gets, whether a Ray's nodes
can place a run's workers, and what the run says when they cannot."""

from __future__ import annotations

import pytest
import tensorflow as tf

from service import cluster
from service.spec import SpecError, apply_overrides, validate_train
from service.engines.tf_keras.worker import communication_options

RING = tf.distribute.experimental.CommunicationImplementation.RING
NCCL = tf.distribute.experimental.CommunicationImplementation.NCCL


def scaling(*overrides: str):
    return validate_train(apply_overrides({}, list(overrides))).scaling


@pytest.mark.parametrize("overrides, expected", [
    ((), RING),                                                   # CPU workers: gRPC RING
    (("scaling.use_gpu=true",), NCCL),                            # GPUs: NCCL, by default
    (("scaling.use_gpu=true", "scaling.collective=ring"), RING),  # asked for
    (("scaling.use_gpu=true", "scaling.collective=nccl"), NCCL),
    (("scaling.collective=ring",), RING),
])
def test_the_collective_is_nccl_between_gpus_and_ring_between_cpus(overrides, expected):
    s = scaling(*overrides)
    # Building the options needs no GPU: they are what MultiWorkerMirroredStrategy is given.
    assert communication_options(s.collective, s.use_gpu).implementation == expected


def test_nccl_without_gpus_and_gpus_of_zero_are_spec_errors():
    with pytest.raises(SpecError, match="collective nccl runs between GPUs"):
        scaling("scaling.collective=nccl")
    with pytest.raises(SpecError, match="gives the workers no GPU"):
        scaling("scaling.use_gpu=true", "scaling.gpus_per_worker=0")
    with pytest.raises(SpecError, match="placement_strategy"):
        scaling("scaling.placement_strategy=SPREADOUT")


def test_resources_per_worker_follow_the_spec():
    assert scaling().resources_per_worker == {"CPU": 1.0}
    assert scaling("scaling.use_gpu=true", "scaling.gpus_per_worker=2").resources_per_worker == {"CPU": 1.0, "GPU": 2.0}


NODE_4CPU = {"CPU": 4.0, "memory": 1e9}
NODE_GPU = {"CPU": 4.0, "GPU": 1.0}


@pytest.mark.parametrize("nodes, bundle, count, strategy, fits", [
    ([NODE_4CPU], {"CPU": 1}, 2, "PACK", True),
    ([NODE_4CPU], {"CPU": 1}, 5, "PACK", False),               # 4 CPUs hold 4 workers
    ([NODE_4CPU], {"CPU": 1}, 2, "STRICT_SPREAD", False),      # one node cannot hold two spread workers
    ([NODE_4CPU, NODE_4CPU], {"CPU": 1}, 2, "STRICT_SPREAD", True),
    ([NODE_4CPU], {"CPU": 1, "GPU": 1}, 1, "PACK", False),     # no GPU at all
    ([NODE_GPU, NODE_GPU], {"CPU": 1, "GPU": 1}, 2, "SPREAD", True),
    ([NODE_GPU], {"CPU": 1, "GPU": 0.5}, 2, "PACK", True),     # two workers share the GPU
    ([{"CPU": 1.0, "GPU": 1.0}, {"CPU": 3.0}], {"CPU": 2, "GPU": 1}, 1, "PACK", False),  # a worker lives on one node
])
def test_placeable_counts_workers_per_node(nodes, bundle, count, strategy, fits):
    assert cluster.placeable(nodes, bundle, count, strategy) is fits


def test_shortfall_names_what_is_missing():
    assert cluster.shortfall([NODE_4CPU], {"CPU": 1.0, "GPU": 1.0}, 2, "PACK", where="this machine's Ray") == (
        "needs 2 GPUs (2 worker(s) x {CPU: 1, GPU: 1}), this machine's Ray has 0")
    assert cluster.shortfall([NODE_4CPU], {"CPU": 1.0}, 2, "STRICT_SPREAD") == (
        "needs 2 nodes that each fit {CPU: 1} (STRICT_SPREAD), Ray has 1")


def test_a_ray_that_cannot_grow_fails_at_once_and_a_cluster_is_waited_for(monkeypatch):
    monkeypatch.setattr(cluster, "alive_nodes", lambda: [NODE_4CPU])
    lines: list[str] = []
    with pytest.raises(cluster.ResourcesError, match="^the run needs 2 GPUs .*this machine's Ray has 0; lower"):
        cluster.wait_for_resources({"CPU": 1, "GPU": 1}, 2, "PACK", can_grow=False, timeout_s=600, echo=lines.append)
    assert lines == []
    with pytest.raises(cluster.ResourcesTimeout, match=r"^gave up after 0s waiting for the cluster: the run needs 2 GPUs"):
        cluster.wait_for_resources({"CPU": 1, "GPU": 1}, 2, "PACK", can_grow=True, timeout_s=0.3,
                                   echo=lines.append, interval_s=0.1, poll_s=0.05)
    assert lines[0] == "waiting for the cluster: the run needs 2 GPUs (2 worker(s) x {CPU: 1, GPU: 1}), " \
                       "the cluster has 0; 0s of 0.3s"
    assert len(lines) >= 2  # said again while it waited


def test_a_cluster_that_grows_is_joined_as_soon_as_the_room_is_there(monkeypatch):
    views = iter([[NODE_4CPU], [NODE_4CPU], [NODE_4CPU, NODE_GPU, NODE_GPU]])
    current = {"nodes": [NODE_4CPU]}

    def nodes():
        return current["nodes"]

    def tick(_seconds):
        current["nodes"] = next(views)

    monkeypatch.setattr(cluster, "alive_nodes", nodes)
    monkeypatch.setattr("time.sleep", tick)
    lines: list[str] = []
    cluster.wait_for_resources({"CPU": 1, "GPU": 1}, 2, "PACK", can_grow=True, timeout_s=600, echo=lines.append)
    assert len(lines) == 1 and lines[0].startswith("waiting for the cluster: the run needs 2 GPUs")
