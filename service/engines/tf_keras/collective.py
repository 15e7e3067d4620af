"""The tf_keras engine's collective: all-gather of small float64 vectors between the ranks, over
MultiWorkerMirroredStrategy's own collective ops (why every exchange is one: `callbacks.py`).

Example::

    collective = Collective(strategy, world_size)
    collective.all_gather([loss_sum, correct, count])     # shape (world_size, 3), in rank order
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import tensorflow as tf


class Collective:
    """All-gather of small float64 vectors across the ranks of a job.

    With one process (one worker, or Ray Train's local mode) it is the identity; with
    MultiWorkerMirroredStrategy it uses the strategy's own collective ops, so it needs no
    channel besides the one training already uses. Every rank must call it equally often,
    in the same order: callers do so at fixed moments (each epoch's end).
    """

    def __init__(self, strategy: Optional[tf.distribute.Strategy] = None, world_size: int = 1):
        self.strategy = strategy if world_size > 1 else None
        self.world_size = world_size
        self._gather = None

    def all_gather(self, values: Sequence[float]) -> np.ndarray:
        """Each rank's vector, stacked in rank order: shape (world_size, len(values))."""
        row = np.asarray(values, dtype=np.float64).reshape(1, -1)
        if self.strategy is None:
            return row
        if self._gather is None:
            strategy = self.strategy

            @tf.function
            def gather(x: tf.Tensor):
                # Each process holds one replica; gather its row from every replica in order.
                per_replica = strategy.experimental_distribute_values_from_function(lambda _: x)
                return strategy.gather(per_replica, axis=0)

            self._gather = gather
        return self._gather(tf.constant(row)).numpy()

    def sum(self, values: Sequence[float]) -> np.ndarray:
        return self.all_gather(values).sum(axis=0)
