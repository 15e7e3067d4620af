"""The keras_jax engine in a worker: Keras 3 on JAX in this process, the processes joined into one
JAX runtime (`jax.distributed`, gloo collectives between CPUs; nothing with one worker), the device
check, and `Worker`, what the one worker loop (`service/engines/loop.py`) asks of this engine.

No `model.fit` and no `model.evaluate`: Keras's evaluate across processes hangs or gives each rank
other wrong values when shards differ in size, so validation is this engine's own shard sums,
all-gathered, as in the tf_keras engine; an epoch is one jitted call (`model.Epoch`) driven
through Keras's `CallbackList` as `fit` would drive it.

Nothing here imports Keras or JAX at module level: `use_jax` must run first.

Example::

    worker = Worker(spec, rank=1, workers=2)     # joins the other processes
    model = worker.build_model(BatchSplit.of(200, 2))
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from service.engines import KERAS_ON_JAX
from service.engines.contract import DeviceError, EngineWorker
from service.engines.keras_jax.backend import COORDINATOR, PROCESS_ID, PROCESSES
from service.spec import TrainSpec

if TYPE_CHECKING:
    import numpy as np

    from service.data import BatchSplit


def use_jax(use_gpu: bool) -> None:
    """Keras 3 on JAX in this process: before Keras is first imported (the runtime env sets the
    variable for Ray's workers; Ray Train's local mode runs the loop in the driver's process).
    On CPUs JAX is kept to them; with use_gpu it picks its GPU platform when it has one
    (`prepare_devices` then checks that it did)."""
    os.environ.setdefault(*KERAS_ON_JAX)
    if not use_gpu:
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    else:
        # JAX takes 75% of a GPU's memory up front by default; allocating as needed is what the
        # tf_keras engine's memory growth does. (A GPU is never shared: the spec refuses a
        # fractional gpus_per_worker.)
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import keras

    if keras.backend.backend() != "jax":
        raise RuntimeError(f"Keras was imported on its {keras.backend.backend()} backend before the keras_jax "
                           "engine's loop: set KERAS_BACKEND=jax in this process")


def join_processes(world: int, rank: int, use_gpu: bool) -> None:
    """One JAX runtime over the worker group: rank 0 coordinates (`backend.JaxWorkers` chose the
    address). Gloo carries the collectives between CPU processes; between GPUs JAX uses NCCL."""
    import jax

    if world <= 1:
        return
    if not use_gpu:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=os.environ[COORDINATOR], num_processes=int(os.environ[PROCESSES]),
                               process_id=int(os.environ[PROCESS_ID]))
    if jax.process_index() != rank:
        raise RuntimeError(f"JAX process {jax.process_index()} is Ray Train rank {rank}")


def prepare_devices(use_gpu: bool, rank: int) -> str:
    """The device this worker trains on: "CPU", or its GPU's kind. Checked on every worker before
    anything is built, so a GPU run whose JAX cannot see a GPU fails at once instead of training
    on the CPU (JAX falls back to it with only a warning)."""
    import importlib.util

    import jax
    import ray

    if not use_gpu:
        return "CPU"
    try:
        gpus = jax.devices("gpu")
    except RuntimeError:  # no GPU platform: the plugin is missing, or it found no GPU and driver
        gpus = []
    if not gpus:
        cause = ("this JAX is a CPU-only build" if importlib.util.find_spec("jax_cuda12_plugin") is None else
                 "this JAX has its CUDA plugin but cannot use a GPU here: the node has no NVIDIA GPU and driver, "
                 "or the CUDA libraries do not load")
        raise DeviceError(f"rank {rank} on {ray.util.get_node_ip_address()}: use_gpu is set but JAX sees no GPU "
                          f"({cause}); install JAX's CUDA build on the GPU nodes with pip install -e '.[jax-gpu]', "
                          "or train on CPUs without --gpu")
    return gpus[0].device_kind


class Worker(EngineWorker):
    """The keras_jax engine in one Ray Train worker (`contract.EngineWorker`): Keras 3 on JAX, the
    processes joined into one JAX runtime, epochs as one jitted call each (`model.Epoch`)."""

    def __init__(self, spec: TrainSpec, rank: int, workers: int):
        super().__init__(spec, rank, workers)
        use_jax(spec.scaling.use_gpu)
        join_processes(workers, rank, spec.scaling.use_gpu)
        # Imported only now: Keras 3 reads its backend when it is first imported.
        from service.engines.keras_jax import callbacks, export, model, state
        from service.engines.keras_jax.collective import ProcessCollective

        self.callbacks = callbacks.CALLBACKS
        self._export, self._model, self._state, self._collective = export, model, state, ProcessCollective

    def prepare_devices(self) -> str:
        return prepare_devices(self.spec.scaling.use_gpu, self.rank)

    def build_model(self, split: BatchSplit, input_shape: tuple[int, ...], classes: int) -> Any:
        import keras

        self.classes = classes
        # As in a new process, when this one trained a run before (a study's warm trial): Keras's
        # name counters start over, so a model of the same layers has the same names and program
        # (`model.compiled`).
        keras.backend.clear_session()
        return self._model.build_model(self.spec.model, seed=self.spec.training.seed, input_shape=input_shape,
                                       classes=classes)

    def restore(self, directory: Any, model: Any) -> Any:
        return self._state.restore(directory, model)

    def save(self, directory: Any, model: Any, epoch: int, callbacks: dict) -> None:
        self._state.save(directory, model, epoch, callbacks)

    def state_arrays(self, model: Any) -> dict[str, np.ndarray]:
        return self._state.state_arrays(model)

    def collective(self) -> Any:
        return self._collective(self.workers)

    def evaluator(self, model: Any, x: np.ndarray, y: np.ndarray) -> Any:
        return self._model.ShardEvaluator(model, x, y, self.classes)

    def train(self, model: Any, callbacks: list, *, steps: int, x: np.ndarray, y: np.ndarray,
              split: BatchSplit, start: int) -> None:
        """As `fit` would drive the epochs: each epoch's logs go through the callbacks in order, and
        a stop decided at an epoch's end ends training."""
        import keras

        spec, jax_model = self.spec, self._model
        epoch_fn = jax_model.Epoch(model, jax_model.make_mesh(), split, self.rank, spec.training.seed, self.classes)
        hooks = keras.callbacks.CallbackList(callbacks, model=model, epochs=spec.training.epochs, steps=steps,
                                             verbose=0)
        model.stop_training = False
        hooks.on_train_begin()
        for epoch in range(start, spec.training.epochs):
            hooks.on_epoch_begin(epoch)
            batches = jax_model.epoch_order(spec.training.seed, epoch, len(x), steps, split.global_batch)
            logs = epoch_fn.run(x, y, batches)
            hooks.on_epoch_end(epoch, logs)
            if model.stop_training:
                break
        hooks.on_train_end()

    def keras_file(self, model: Any) -> bytes:
        return self._export.keras_file(model)
