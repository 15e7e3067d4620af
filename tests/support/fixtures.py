"""The suite's pytest fixtures, registered for every test module by tests/conftest.py.

- `odd_mnist` (session): real MNIST cut to sizes that no worker count divides evenly.
- `ray_head` (module): a real Ray head with 4 CPUs and its job server, no worker nodes.
- `multinode_cluster` (module): a head with 0 CPUs and 1-CPU worker nodes "n1" and "n2".
- `module_ray` (module): one Ray in this process for a module's in-process runs (`train.run`),
  for tests whose subject is not Ray's start. A run that finds Ray started joins it
  (service.cluster.ray_session), so the module pays Ray's start once, not once per run.

Clusters are torn down by pid (tests/support/cluster.py), never `ray stop`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from tests.support.cluster import LocalCluster

# Two 1-CPU training workers, a job driver's helpers, and room to spare.
HEAD_CPUS = 4
# The runs of a module in one Ray: up to three 1-CPU workers beside Ray Train's controller.
MODULE_RAY_CPUS = 4


@pytest.fixture(scope="session")
def odd_mnist(tmp_path_factory) -> Path:
    """Real MNIST cut to sizes that no worker count divides evenly.

    6007 training images -> holdout of 1001 (shards of 501 and 500 on two workers) and 5006
    to train; 999 test images. Uneven shards are where a mean of per-worker means goes wrong.
    """
    from service import data as data_lib

    sample = data_lib.load("sample", "test")
    path = tmp_path_factory.mktemp("data") / "odd-mnist.npz"
    np.savez(
        path,
        x_train=sample.x_train[:6007].reshape(-1, 28, 28),
        y_train=sample.y_train[:6007],
        x_test=sample.x_test[:999].reshape(-1, 28, 28),
        y_test=sample.y_test[:999],
    )
    return path


@pytest.fixture(scope="module")
def ray_head() -> Iterator[LocalCluster]:
    # Module scope: its processes should not outlive the module while later modules start
    # clusters of their own.
    cluster = LocalCluster(head_cpus=HEAD_CPUS).start()
    try:
        yield cluster
    finally:
        cluster.shutdown()


@pytest.fixture(scope="module")
def multinode_cluster() -> Iterator[LocalCluster]:
    """A head with 0 CPUs and worker nodes "n1" and "n2" with 1 CPU each (see cluster.py)."""
    cluster = LocalCluster(head_cpus=0).start()
    try:
        cluster.add_nodes(["n1", "n2"])
        yield cluster
    finally:
        cluster.shutdown()


@pytest.fixture(scope="module")
def module_ray() -> Iterator[None]:
    """One local Ray in this process for the module's in-process runs; stopped after the module."""
    import logging

    import ray

    assert not ray.is_initialized(), "a Ray of another module is still running in this process"
    ray.init(num_cpus=MODULE_RAY_CPUS, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()
