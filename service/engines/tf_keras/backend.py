"""How Ray Train starts the tf_keras engine's workers: TF_CONFIG for MultiWorkerMirroredStrategy,
without importing TensorFlow anywhere but in the workers (the entry point each worker runs is
`worker.py`'s, imported there by `Engine.loop`).

Ray's `TensorflowTrainer` does the same TF_CONFIG set-up, but its backend lives in
`ray.train.tensorflow`, whose package imports TensorFlow: the driver and Ray Train's controller
each spent about 6 s importing a TensorFlow they never use, and the workers imported Keras 3
(which plateau does not use) for Ray's version record. `TensorflowWorkers` is that backend
without those imports; `benchmarks/throughput.py` reports the start-up it leaves.

Example::

    DataParallelTrainer(engine.loop, backend_config=TensorflowWorkers(), ...)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import ray
from ray.train.backend import Backend, BackendConfig
from ray.train.backend import BaseWorkerGroup

from service.compat.ray import build_address, get_address_and_port


def _set_tf_config(addresses: list[str], index: int) -> None:
    """The cluster MultiWorkerMirroredStrategy reads: every worker's host:port, and this one's index."""
    os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}})


class _TensorflowBackend(Backend):
    def on_start(self, worker_group: BaseWorkerGroup, backend_config: "TensorflowWorkers") -> None:
        def free_address() -> str:
            return build_address(*get_address_and_port())

        addresses = worker_group.execute(free_address)
        ray.get([worker_group.execute_single_async(rank, _set_tf_config, addresses=addresses, index=rank)
                 for rank in range(len(worker_group))])


@dataclass
class TensorflowWorkers(BackendConfig):
    """Ray Train backend: each worker gets the TF_CONFIG of its worker group (set again at every
    restart or resize, as the group's addresses change)."""

    @property
    def backend_cls(self):
        return _TensorflowBackend
