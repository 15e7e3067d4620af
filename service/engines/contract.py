"""What an engine provides: the roles every engine fills, each in the module of the same name in
the engine's package (`service/engines/<engine>/`), declared as `typing.Protocol`s.

The engine-neutral code (`service/deciding.py`, `service/reporting.py`, `service/replicas.py`,
`service/checkpoints/layout.py`) is written against these; each engine's `worker.py` wires its own
implementations together. Nothing here imports a framework: a model, a Keras callback class or a
dataset is `Any` to this module.

| role | module | tf_keras | keras_jax |
| --- | --- | --- | --- |
| `Devices` | `worker.py` | `prepare_devices` (TensorFlow's GPUs, memory growth) | `prepare_devices` (JAX's GPUs) |
| `BuildModel` | `model.py` | `build_model` (step-seeded dropout, scaled loss) | `build_model` (stock Keras 3 layers) |
| `State` | `state.py` | `state_arrays`, `save`, `restore` | `state_arrays`, `save`, `restore` |
| `Collective` | `collective.py` | `Collective` (the strategy's collective ops) | `ProcessCollective` (JAX's) |
| `ShardEvaluator` | `model.py` | `ShardEvaluator` | `ShardEvaluator` |
| `CallbackKinds` | `callbacks.py` | Keras's `Callback` base, via `TF_KERAS` and the classes | `KERAS_JAX` and the classes |
| `TrainEpochs` | `worker.py` | `model.fit` on the strategy's per-replica dataset | `train` (`model.Epoch`, one jitted call) |
| `Export` | `export.py` | `keras_file(model, spec)`: stock tf_keras layers | `keras_file(model)`: the model itself |

Example::

    def check(collective: Collective) -> None: ...   # any engine's collective type-checks here
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np


class Devices(Protocol):
    """`prepare_devices(use_gpu, rank)`: the device this worker trains on ("CPU", or its GPU's name),
    checked on every worker before anything is built; a GPU run that cannot see a GPU raises the
    engine's `DeviceError` with one line naming the rank and the node."""

    def __call__(self, use_gpu: bool, rank: int) -> str: ...


class BuildModel(Protocol):
    """`build_model(spec.model, seed=...)`: the seed's network, compiled with Adam, its weights drawn
    from `seed` so that every rank builds the same values without any exchange."""

    def __call__(self, spec: Any, seed: int = 7) -> Any: ...


@runtime_checkable
class State(Protocol):
    """The model's state in a checkpoint (`service/checkpoints/layout.py`), by stable names:
    weights, the optimizer's step counter and slots, the learning rate.

    * `state_arrays(model)`: those arrays (also what the replica check compares);
    * `save(directory, model, epoch, callbacks)`: rank 0's part of an epoch's checkpoint;
    * `restore(directory, model)`: the state back in place; returns `layout.Restored`
      (the epoch and the callbacks' state).
    """

    def state_arrays(self, model: Any) -> dict[str, np.ndarray]: ...

    def save(self, directory: str | Path, model: Any, epoch: int, callbacks: dict[str, dict[str, Any]]) -> None: ...

    def restore(self, directory: str | Path, model: Any) -> Any: ...


@runtime_checkable
class Collective(Protocol):
    """All-gather of small float64 vectors across the ranks, in rank order, bit for bit (every rank's
    numpy arithmetic on the rows then gives identical results). Every rank calls it equally often,
    in the same order; with one worker it is the identity."""

    world_size: int

    def all_gather(self, values: Sequence[float]) -> np.ndarray:
        """Each rank's vector, stacked in rank order: shape (world_size, len(values))."""
        ...

    def sum(self, values: Sequence[float]) -> np.ndarray:
        """The element-wise sum of every rank's vector."""
        ...


@runtime_checkable
class ShardEvaluator(Protocol):
    """Loss and accuracy *sums* of the model over this rank's shard of a split (no exchange): the
    sums of the ranks add up to the whole split's (`deciding.global_metrics`)."""

    def sums(self) -> np.ndarray:
        """[loss sum, correct count, example count] over this shard, in float64."""
        ...


class CallbackKinds(Protocol):
    """The engine's Keras callback classes (`callbacks.py`): every shared class of
    `service/deciding.py`, `service/reporting.py` and `service/replicas.py` declared on the
    engine's Keras `Callback` base (the stock deciders on its own ReduceLROnPlateau and
    EarlyStopping), and `deciding.Kinds` of them for `deciding.build`. The module itself is
    passed around as this (e.g. to `replicas.replica_callbacks` and `reporting.drills`)."""

    GlobalMetrics: type
    Consensus: type
    ResumableReduceLROnPlateau: type
    ResumableEarlyStopping: type
    ReportEachEpoch: type
    PauseAfterEpoch: type
    FailOnce: type
    ReplicaCheck: type
    PerturbOnce: type

    def get_lr(self, model: Any) -> float:
        """The optimizer's learning rate as the float32 it is, read back as its shortest repr."""
        ...


class TrainEpochs(Protocol):
    """Epochs `start` .. `training.epochs` under the callbacks, as Keras's `fit` drives them: each
    epoch's global training logs go through the callbacks in order, and a stop decided at an
    epoch's end ends training. Epoch e's batches are a pure function of (seed, e), whatever the
    number of workers, and each rank trains on its rows of every global batch."""

    def __call__(self, model: Any, callbacks: list, start: int) -> None: ...


class Export(Protocol):
    """`keras_file(model, ...)`: the final model as the bytes of a `.keras` file of stock layers, which
    rank 0 sends to the driver (the driver writes `model.keras`)."""

    def __call__(self, model: Any, *args: Any) -> bytes: ...
