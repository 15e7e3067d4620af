"""How Ray Train starts the keras_jax engine's workers: every worker learns the JAX coordinator's
address (rank 0's host and a free port there), the number of processes and its own index, as
environment variables that `worker.py` hands to `jax.distributed.initialize`.

Ray's own `JaxTrainer` backend does not initialise JAX's distributed runtime on CPUs, so plateau
does it in the loop; this backend only chooses and hands out the address. It imports no JAX: the
driver and Ray Train's controller run it.

Example::

    DataParallelTrainer(loop, backend_config=JaxWorkers(), ...)
    # in a worker: os.environ[COORDINATOR] == "10.0.0.5:41237", os.environ[PROCESS_ID] == "1"
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import ray
from ray.train.backend import Backend, BackendConfig, BaseWorkerGroup

from service.compat.ray import build_address, get_address_and_port

COORDINATOR, PROCESSES, PROCESS_ID = "PLATEAU_JAX_COORDINATOR", "PLATEAU_JAX_PROCESSES", "PLATEAU_JAX_PROCESS_ID"


def _set_env(values: dict[str, str]) -> None:
    os.environ.update(values)


class _JaxBackend(Backend):
    def on_start(self, worker_group: BaseWorkerGroup, backend_config: "JaxWorkers") -> None:
        # Chosen anew at every (re)start: a restarted or resized group is a fresh set of processes.
        coordinator = build_address(*worker_group.execute_single(0, get_address_and_port))
        size = len(worker_group)
        ray.get([worker_group.execute_single_async(rank, _set_env, {COORDINATOR: coordinator, PROCESSES: str(size),
                                                                    PROCESS_ID: str(rank)})
                 for rank in range(size)])


@dataclass
class JaxWorkers(BackendConfig):
    """Ray Train backend of the keras_jax engine: each worker gets its group's JAX coordinator."""

    @property
    def backend_cls(self):
        return _JaxBackend
