"""The replica check: after every epoch, do all ranks still hold the same model?

Data-parallel training is only correct while every rank holds bit-identical weights, optimizer
state and learning rate: the all-reduce averages gradients, and identical replicas apply them
identically. A rank that drifts (a rank-local learning rate, a bad device, a bug) would silently
train another model. `ReplicaCheck` runs after `Consensus` at every epoch's end: each rank takes
a CRC-32 of every variable's bytes (weights, Adam's slots and step counter, the learning rate,
named as the checkpoint names them), the ranks all-gather those checksums over the strategy's
own collective (one small exchange), and any difference fails the run on every rank at once with
one line naming the epoch, the ranks and the first variable that differs. The epoch's decision
record says `replicas_identical`; what the check cost goes with the epoch's report
(`replica_check_seconds`, in the checkpoint's traces), not into the decision record, which
stays a deterministic function of the run.

The logic is every engine's (numpy and zlib only); each engine declares `ReplicaCheck` and
`PerturbOnce` on its Keras's `Callback` and hands over how it names its state (`state_arrays`:
its `state.state_arrays`).

Example::

    checks = replica_callbacks(spec, collective, rank, deciders.consensus, tf_callbacks, state.state_arrays)
    callbacks = [*deciders.as_list(), *checks, report]
"""

from __future__ import annotations

import time
import zlib
from typing import Any, Callable

import numpy as np

from service.core.messages import CHECK_SECONDS  # the key in `logs` and in the epoch's metrics
from service.spec import TrainSpec


class ReplicaMismatch(RuntimeError):
    """The ranks' models differ: one line saying after which epoch, where and in what."""


def checksums(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """A CRC-32 of each array's bytes, as float64 (exact: a CRC-32 is below 2**53)."""
    return np.array([zlib.crc32(np.ascontiguousarray(a)) for a in arrays.values()], dtype=np.float64)


def mismatch_line(epoch: int, names: list[str], rows: np.ndarray) -> str:
    """`replicas differ after epoch E: rank R's NAME is not rank 0's (K of N variables differ)`."""
    differs = np.flatnonzero((rows != rows[0]).any(axis=0))
    first = int(differs[0])
    ranks = [r for r in range(len(rows)) if rows[r, first] != rows[0, first]]
    who = f"rank {ranks[0]}'s" if len(ranks) == 1 else f"ranks {', '.join(map(str, ranks))}'"
    return (f"replicas differ after epoch {epoch}: {who} {names[first]} is not rank 0's "
            f"({len(differs)} of {len(names)} variables differ)")


class ReplicaCheck:
    """Fails the run as soon as the ranks' models differ. Place it after `Consensus` (the
    learning rate is final for the epoch) and before the epoch's report and checkpoint.
    `state_arrays(model)`: the engine's named state (the checkpoint's names)."""

    def __init__(self, collective: Any, consensus: Any, state_arrays: Callable[[Any], dict[str, np.ndarray]]):
        super().__init__()
        self.collective, self.consensus, self.state_arrays = collective, consensus, state_arrays

    def on_epoch_end(self, epoch: int, logs: dict | None = None):
        started = time.perf_counter()
        arrays = self.state_arrays(self.model)
        rows = self.collective.all_gather(checksums(arrays))
        identical = bool((rows == rows[0]).all())
        self.consensus.last.replicas_identical = identical
        if logs is not None:  # the same dict reaches ReportEachEpoch
            logs[CHECK_SECONDS] = round(time.perf_counter() - started, 6)
        if not identical:  # every rank saw the same rows: every rank stops here, none waits
            raise ReplicaMismatch(mismatch_line(epoch + 1, list(arrays), rows))


class PerturbOnce:
    """A drill: at the end of `epoch` (1-based), move the first element of this rank's last
    weight (the output layer's bias) to the next float32 up, the smallest change there is."""

    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch: int, logs: dict | None = None):
        if epoch + 1 != self.epoch:
            return
        variable = self.model.weights[-1]
        value = np.array(variable.numpy())  # a copy of its own (Keras 3 hands out read-only views)
        value.reshape(-1)[0] = np.nextafter(value.reshape(-1)[0], np.float32(np.inf))
        variable.assign(value)


def replica_callbacks(spec: TrainSpec, collective: Any, rank: int, consensus: Any, kinds: Any,
                      state_arrays: Callable[[Any], dict[str, np.ndarray]]) -> list:
    """The check (and its drill, when the spec asks for one), as `kinds`' classes (`.ReplicaCheck`,
    `.PerturbOnce`); none with a single replica."""
    if collective.world_size <= 1 or not spec.debug.replica_check:
        return []
    drill = spec.debug.perturb_at_epoch is not None and rank == spec.debug.perturb_rank
    return [*([kinds.PerturbOnce(spec.debug.perturb_at_epoch)] if drill else []),
            kinds.ReplicaCheck(collective, consensus, state_arrays)]
