"""The tf_keras engine in a worker: its threads and devices, MultiWorkerMirroredStrategy, the input
pipeline of each rank's rows, and `Worker`, what the one worker loop (`service/engines/loop.py`)
asks of this engine.

Example::

    worker = Worker(spec, rank=1, workers=2)
    model = worker.build_model(BatchSplit.of(200, 2))
    worker.train(model, callbacks, steps=42, x=x_train, y=y_train, split=BatchSplit.of(200, 2), start=0)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import ray
import tensorflow as tf

from service.compat import tensorflow as compat_tf
from service.engines.contract import DATA_ORDER, DeviceError, EngineWorker
from service.engines.tf_keras import callbacks as tf_callbacks
from service.engines.tf_keras import export, state
from service.engines.tf_keras.collective import Collective
from service.engines.tf_keras.model import BatchSplit, ShardEvaluator, build_model, random_key, scale_features
from service.spec import TrainSpec


def configure_threads(cpus: float) -> None:
    """One TF thread pool sized to the CPUs Ray gave this worker.

    TensorFlow sizes its pools to the whole machine; two workers on two cores would each run
    two+ compute threads and thrash. Must run before TensorFlow creates its context.
    """
    threads = max(1, int(cpus))
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        pass  # context already initialised (in-process local mode): keep what is there


def prepare_devices(use_gpu: bool, rank: int) -> str:
    """The device this worker trains on: "CPU", or its GPU's name (with memory growth on).

    Checked on every worker before anything is built, so a GPU run on a node whose TensorFlow
    cannot see a GPU fails at once instead of training on the CPU. Memory growth: the worker takes
    GPU memory as it needs it, not the whole card up front (never run on a GPU so far).
    """
    if not use_gpu:
        return "CPU"
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        # pip's tensorflow wheel is built with CUDA but ships without the CUDA libraries.
        cause = ("this TensorFlow is a CPU-only build" if not tf.test.is_built_with_cuda() else
                 "this TensorFlow has CUDA support but cannot use a GPU here: the CUDA libraries are "
                 "missing, or the node has no NVIDIA GPU and driver")
        raise DeviceError(f"rank {rank} on {ray.util.get_node_ip_address()}: use_gpu is set but TensorFlow "
                          f"sees no GPU ({cause}); install TensorFlow's CUDA build on the GPU nodes with "
                          "pip install -e '.[gpu]', or train on CPUs without --gpu")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            pass  # context already initialised (in-process local mode): keep what is there
    return tf.config.experimental.get_device_details(gpus[0]).get("device_name", gpus[0].name)


def communication_options(collective: str, use_gpu: bool):
    """How MultiWorkerMirroredStrategy all-reduces: NCCL between GPUs (no copy through host
    memory and gRPC), RING over gRPC between CPU processes (NCCL cannot run there)."""
    implementation = tf.distribute.experimental.CommunicationImplementation
    chosen = collective if collective != "auto" else ("nccl" if use_gpu else "ring")
    return tf.distribute.experimental.CommunicationOptions(
        implementation=implementation.NCCL if chosen == "nccl" else implementation.RING)


def make_strategy(world_size: int, collective: str = "auto", use_gpu: bool = False):
    if world_size <= 1:
        return tf.distribute.get_strategy()
    return tf.distribute.MultiWorkerMirroredStrategy(communication_options=communication_options(collective, use_gpu))


def train_dataset(x: np.ndarray, y: np.ndarray, *, steps: int, rows: slice, global_batch: int, seed: int, start_epoch: int,
                  epochs: int, classes: int = 10):
    """This rank's part of every global batch for epochs [start_epoch, epochs).

    Epoch e's order of all training images is a pure function of (seed, e), whatever the number
    of workers: step k's global batch is images order[k*B : (k+1)*B], and this rank takes `rows`
    of it. A resumed run, or one resumed with more or fewer workers, trains on the same batches.
    """
    x = tf.constant(x)
    y = tf.constant(y)
    n = int(x.shape[0])

    def one_epoch(epoch: tf.Tensor):
        order = tf.random.experimental.stateless_shuffle(tf.range(n), seed=random_key(seed, DATA_ORDER, epoch))
        batches = tf.reshape(order[: steps * global_batch], [steps, global_batch])
        return tf.data.Dataset.from_tensor_slices(batches[:, rows.start:rows.stop])

    def to_batch(idx: tf.Tensor):
        return scale_features(tf.gather(x, idx)), tf.one_hot(tf.cast(tf.gather(y, idx), tf.int32), classes)

    # Repeated, so its cardinality is infinite: fit draws exactly steps x epochs batches anyway,
    # and on a dataset of unknown size MultiWorkerMirroredStrategy would all-reduce an "is there
    # another batch" flag before every step (tensorflow's input_lib, partial-batch handling).
    ds = tf.data.Dataset.range(start_epoch, epochs).flat_map(one_epoch).repeat()
    ds = ds.map(to_batch, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
    return ds.with_options(NO_AUTOTUNING)


# No tf.data autotuning, in our pipeline and in the per-device pipelines MultiWorkerMirroredStrategy
# builds on it. An iterator with autotuning has an optimizer thread, and under the strategy the
# iterators fit drops on return wait for that thread to end its round (a py-spy dump shows the
# training thread in RootDataset::Iterator's destructor): 2-worker runs spent 2-56 s between the
# last epoch and the end of fit. Without it the AUTOTUNE knobs keep their starting values, and the
# epochs measured as fast.
NO_AUTOTUNING = tf.data.Options()
NO_AUTOTUNING.autotune.enabled = False


def device_pipelines_without_autotuning() -> None:
    """Make the strategy's per-device pipelines (tensorflow's multi_device_iterator_ops, which
    takes no options for them) run without autotuning too; once per process."""
    compat_tf.device_datasets_with_options(NO_AUTOTUNING)


def per_replica(strategy: tf.distribute.Strategy, dataset: tf.data.Dataset, world_size: int):
    """Hand each rank's own batches to its replica as they are.

    `experimental_distribute_dataset` (what fit does with a plain dataset) treats a batch as
    global: it re-batches it across all replicas, so each rank would train on half of its
    batch and the global batch would silently halve. A dataset from a function is taken as
    per-replica, and our ranks already hold disjoint rows, so nothing is sharded again.
    """
    if world_size <= 1:
        return dataset
    device_pipelines_without_autotuning()
    return strategy.distribute_datasets_from_function(lambda _context: dataset)


class Worker(EngineWorker):
    """The tf_keras engine in one Ray Train worker (`contract.EngineWorker`): the seed's model under
    MultiWorkerMirroredStrategy (no strategy with one process), trained by `model.fit`."""

    callbacks = tf_callbacks.CALLBACKS

    def __init__(self, spec: TrainSpec, rank: int, workers: int):
        super().__init__(spec, rank, workers)
        configure_threads(spec.scaling.cpus_per_worker)
        self.strategy = None

    def prepare_devices(self) -> str:
        return prepare_devices(self.spec.scaling.use_gpu, self.rank)

    def build_model(self, split: BatchSplit, input_shape: tuple[int, ...], classes: int) -> Any:
        import tf_keras

        scaling = self.spec.scaling
        self.classes = classes
        # As in a new process, when this one trained a run before (a study's warm trial): Keras's
        # name counters and graph start over.
        tf_keras.backend.clear_session()
        self.strategy = make_strategy(self.workers, scaling.collective, scaling.use_gpu)
        with self.strategy.scope():
            return build_model(self.spec.model, seed=self.spec.training.seed,
                               split=split if self.workers > 1 else None,
                               steps_per_execution=self.spec.training.steps_per_execution,
                               input_shape=input_shape, classes=classes)

    def restore(self, directory: Any, model: Any) -> Any:
        # In the strategy's scope: Adam builds its slots there, as mirrored variables.
        with self.strategy.scope():
            return state.restore(directory, model)

    def save(self, directory: Any, model: Any, epoch: int, callbacks: dict) -> None:
        state.save(directory, model, epoch, callbacks)

    def state_arrays(self, model: Any) -> dict[str, np.ndarray]:
        return state.state_arrays(model)

    def collective(self) -> Collective:
        return Collective(self.strategy, self.workers)

    def evaluator(self, model: Any, x: np.ndarray, y: np.ndarray) -> ShardEvaluator:
        return ShardEvaluator(model, x, y, self.classes)

    def train(self, model: Any, callbacks: list, *, steps: int, x: np.ndarray, y: np.ndarray,
              split: BatchSplit, start: int) -> None:
        epochs = self.spec.training.epochs
        dataset = train_dataset(x, y, steps=steps, rows=slice(split.offsets[self.rank],
                                                              split.offsets[self.rank] + split.sizes[self.rank]),
                                global_batch=split.global_batch, seed=self.spec.training.seed, start_epoch=start,
                                epochs=epochs, classes=self.classes)
        model.fit(per_replica(self.strategy, dataset, self.workers), epochs=epochs, initial_epoch=start,
                  steps_per_epoch=steps, callbacks=callbacks, verbose=0)

    def keras_file(self, model: Any) -> bytes:
        return export.keras_file(model)
