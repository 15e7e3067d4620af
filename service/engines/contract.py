"""What an engine provides: the contract between the one worker loop (`loop.py`) and an engine.

`EngineWorker` is the abstract class every engine's `worker.py` subclasses: one object per Ray Train
worker, built by the loop, asked for each thing in the order the loop needs it. Its collective and
its shard evaluator are the two small protocols below. Nothing here imports a framework: a model,
a Keras callback class or a dataset is `Any` to this module.

| method | what it gives the loop |
| --- | --- |
| `EngineWorker(spec, rank, workers)` | the process ready for the framework (threads, JAX's processes joined) |
| `prepare_devices()` | "CPU", or its GPU's name; `DeviceError` when the spec's device is not there |
| `build_model(split, input_shape, classes)` | the compiled model, the same weights on every rank (from the seed) |
| `restore(directory, model)` / `save(...)` / `state_arrays(model)` | the model's state in a checkpoint (`service/checkpoints/layout.py`) |
| `collective()` | a `Collective`: all-gather and sum of small float64 vectors, in rank order |
| `evaluator(model, x, y)` | a `ShardEvaluator`: the loss and accuracy sums of this rank's shard |
| `callbacks` | the shared callbacks on the engine's Keras (`service/core/callbacks.declare`) |
| `train(model, callbacks, ...)` | epochs `start` .. `training.epochs` under the callbacks |
| `keras_file(model)` | the final model as the bytes of a `.keras` file |

Example::

    class Worker(EngineWorker):
        callbacks = declare(my_keras, read_lr=..., write_lr=...)
        def prepare_devices(self) -> str: return "CPU"
        ...
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

# The random streams of a run, whatever the engine: a random number is keyed by (seed, stream,
# counter), so epoch e's order of the training examples and step k's dropout mask are pure
# functions of the run's seed, whatever the number of workers and however often it resumed.
DATA_ORDER, DROPOUT = 1, 2


class DeviceError(RuntimeError):
    """A worker cannot use the device the spec asks for: one line naming the rank and the node."""


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


class EngineWorker(abc.ABC):
    """One Ray Train worker's engine: what `loop.train_loop_per_worker` asks of it, in that order.

    Built once per worker process, after Ray Train made the worker group: `spec` is the run's
    (a `TrainSpec`), `rank` this worker's, `workers` the group's size. The constructor gets the
    process ready for the framework; nothing is built yet.
    """

    callbacks: Any  # `service.core.callbacks.Callbacks`: the shared callbacks on this engine's Keras

    def __init__(self, spec: Any, rank: int, workers: int):
        self.spec, self.rank, self.workers = spec, rank, workers

    @abc.abstractmethod
    def prepare_devices(self) -> str:
        """The device this worker trains on ("CPU", or its GPU's name), checked before anything is
        built: a GPU run that cannot see a GPU raises `DeviceError` with one line."""

    @abc.abstractmethod
    def build_model(self, split: Any, input_shape: tuple[int, ...], classes: int) -> Any:
        """The spec's model (its builder's, or the seed's MLP), compiled, its weights drawn from
        `spec.training.seed` so that every rank builds the same values without any exchange; `split`
        is the global batch's `BatchSplit`, `input_shape` one example's, `classes` the labels' count."""

    @abc.abstractmethod
    def restore(self, directory: str | Path, model: Any) -> Any:
        """A checkpoint's state back into `model`; the `layout.Restored` (epoch, callbacks' state)."""

    @abc.abstractmethod
    def save(self, directory: str | Path, model: Any, epoch: int, callbacks: dict[str, dict[str, Any]]) -> None:
        """Rank 0's part of an epoch's checkpoint: the model's state, the epoch and the callbacks' state."""

    @abc.abstractmethod
    def state_arrays(self, model: Any) -> dict[str, np.ndarray]:
        """Weights, the optimizer's state and the learning rate by the checkpoint's names (also what
        the replica check compares)."""

    @abc.abstractmethod
    def collective(self) -> Collective:
        """The collective the deciders and the replica check exchange their vectors over."""

    @abc.abstractmethod
    def evaluator(self, model: Any, x: np.ndarray, y: np.ndarray) -> ShardEvaluator:
        """The shard sums of `model` over this rank's rows `x`, `y` of a split."""

    @abc.abstractmethod
    def train(self, model: Any, callbacks: list, *, steps: int, x: np.ndarray, y: np.ndarray, split: Any,
              start: int) -> None:
        """Epochs `start` .. `training.epochs` under `callbacks`, as Keras's `fit` drives them: each
        epoch's global training logs go through the callbacks in order, and a stop decided at an
        epoch's end ends training. Epoch e's batches are a pure function of (seed, e), whatever the
        number of workers, and each rank trains on its rows of every global batch (`split`)."""

    @abc.abstractmethod
    def keras_file(self, model: Any) -> bytes:
        """The final model as the bytes of a `.keras` file of stock layers (rank 0 sends them to the
        driver, which writes `model.keras`)."""
