"""All-gather of small float64 vectors between the keras_jax engine's processes.

`jax.experimental.multihost_utils.process_allgather` runs over the same distributed runtime as
the gradients (gloo on CPUs). JAX computes in 32 bits unless told otherwise, and a float64 sent as
a jax array would come back rounded to float32: the vector travels as its raw uint32 words and is
read back bit for bit, so every rank's numpy arithmetic on the rows gives identical results.

Example::

    collective = ProcessCollective(world_size=2)
    collective.all_gather([loss_sum, correct, count])     # shape (2, 3), in rank order
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from service.core.deciding import LocalCollective


class ProcessCollective(LocalCollective):
    """Each rank's vector, stacked in rank order (process index = Ray Train rank). Every rank must
    call it equally often, in the same order: callers do so at fixed moments (each epoch's end)."""

    def __init__(self, world_size: int = 1):
        self.world_size = world_size

    def all_gather(self, values: Sequence[float]) -> np.ndarray:
        row = np.ascontiguousarray(np.asarray(values, dtype=np.float64).reshape(-1))
        if self.world_size <= 1:
            return row.reshape(1, -1)
        from jax.experimental import multihost_utils

        words = np.asarray(multihost_utils.process_allgather(row.view(np.uint32)))
        return np.ascontiguousarray(words).view(np.float64).reshape(self.world_size, -1)
