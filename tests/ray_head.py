"""A real Ray head for job tests: tests/ray_cluster.py's LocalCluster with no worker nodes.

The fixture `ray_head` is registered for every test module by tests/conftest.py (`pytest_plugins`).

The head has 4 logical CPUs (two 1-CPU training workers, the job driver's helpers, room to
spare), token auth on, free ports, its own temp dir and HOME; teardown kills exactly its own
processes by pid, never `ray stop`. See tests/ray_cluster.py for the details.
"""

from __future__ import annotations

from typing import Iterator

import pytest

from tests.ray_cluster import PROJECT_ROOT, LocalCluster, free_port

__all__ = ["PROJECT_ROOT", "RayHead", "free_port", "ray_head"]

# The head alone is a cluster without worker nodes: .address, .env, .root, .plateau(...).
RayHead = LocalCluster
HEAD_CPUS = 4


@pytest.fixture(scope="module")
def ray_head() -> Iterator[LocalCluster]:
    # Module scope: only tests/test_jobs.py uses it, and its processes should not outlive it
    # while later modules start clusters of their own.
    cluster = LocalCluster(head_cpus=HEAD_CPUS).start()
    try:
        yield cluster
    finally:
        cluster.shutdown()
