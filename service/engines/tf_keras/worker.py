"""The per-worker training loop: what every Ray Train worker runs.

`train_loop_per_worker(config)` gets the resolved spec and references to the data arrays,
builds the seed's model under MultiWorkerMirroredStrategy (no strategy with one process),
resumes from the latest checkpoint if Ray Train hands one over, trains with the synchronised
callbacks (`callbacks.py`), reports every epoch to Ray Train with a checkpoint, and finally
evaluates the test set globally.
"""

from __future__ import annotations

import numpy as np
import ray
import ray.train
import tensorflow as tf

from service import reporting
from service.checkpoints import layout as checkpoint
from service import data as data_lib
from service.compat import tensorflow as compat_tf
from service.engines.tf_keras import callbacks as tf_callbacks
from service.engines.tf_keras import export, state
from service.engines.tf_keras.callbacks import DriverQueue, ReportEachEpoch
from service.engines.tf_keras.collective import Collective
from service.engines.tf_keras.model import DATA_ORDER, BatchSplit, ShardEvaluator, build_model, random_key, scale_pixels
from service.messages import FinalReport
from service.replicas import replica_callbacks
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


class DeviceError(RuntimeError):
    """A worker cannot use the device the spec asks for: one line naming the rank and the node."""


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


def train_dataset(x: np.ndarray, y: np.ndarray, *, steps: int, rows: slice, global_batch: int, seed: int, start_epoch: int, epochs: int):
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
        return scale_pixels(tf.gather(x, idx)), tf.one_hot(tf.cast(tf.gather(y, idx), tf.int32), 10)

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


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry point.

    `config`: {"spec": resolved spec dict, "data": {name: ObjectRef}, "steps": steps per epoch,
    "progress": a ray.util.queue.Queue for the driver, or None, "attempt": an id of the driver
    invocation}. Rank 0's final message carries the final model as a .keras file (`export`).
    """
    # -- who this worker is, and its shards of the data
    spec = TrainSpec.model_validate(config["spec"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    configure_threads(spec.scaling.cpus_per_worker)
    device = prepare_devices(spec.scaling.use_gpu, rank)
    driver = DriverQueue(config.get("progress"))
    driver.post(rank, reporting.whereabouts(rank, device, world))
    arrays = {k: ray.get(v) if isinstance(v, ray.ObjectRef) else v for k, v in config["data"].items()}
    # Every rank holds all training images and takes its rows of each global batch; validation
    # and test are evaluated in disjoint shards and summed (callbacks.GlobalMetrics).
    split = BatchSplit.of(spec.training.batch_size, world)
    part = {name: data_lib.shard(len(arrays[f"x_{name}"]), world, rank) for name in ("val", "test")}

    # -- the model, from the latest checkpoint when Ray Train restarts the run
    strategy = make_strategy(world, spec.scaling.collective, spec.scaling.use_gpu)
    restored, traces = checkpoint.Restored(), {}
    with strategy.scope():
        model = build_model(spec.model, seed=spec.training.seed, split=split if world > 1 else None,
                            steps_per_execution=spec.training.steps_per_execution)
        saved = ray.train.get_checkpoint()
        if saved is not None:
            with saved.as_directory() as directory:
                restored = state.restore(directory, model)
                traces = checkpoint.read_traces(directory)

    # -- callbacks: global metrics -> stock deciders -> consensus -> report (-> drill)
    collective = Collective(strategy, world)
    val = ShardEvaluator(model, arrays["x_val"][part["val"]], arrays["y_val"][part["val"]])
    deciders = tf_callbacks.decision_callbacks(spec, collective, rank, val, restored.callbacks)
    # Rank 0 carries the traces of ranks an earlier, larger worker group had.
    former = {r: t for r, t in traces.items() if r >= world} if rank == 0 else {}
    checks = replica_callbacks(spec, collective, rank, deciders.consensus, tf_callbacks, state.state_arrays)
    callbacks = [*deciders.as_list(), *checks,
                 ReportEachEpoch(rank, deciders, driver, traces.get(rank, []), former, save=state.save)]
    callbacks += reporting.drills(spec, rank, config.get("attempt", ""), tf_callbacks)

    # -- train, unless the checkpoint is of a run that already ended
    stopper = restored.callbacks.get("early_stopping", {})
    if stopper.get("stopped_epoch") and stopper.get("best_weights") is not None:
        model.set_weights(stopper["best_weights"])  # what EarlyStopping's on_train_end did before the crash
    if restored.epoch < spec.training.epochs and not stopper.get("stopped_epoch"):
        dataset = train_dataset(
            arrays["x_train"], arrays["y_train"], steps=config["steps"],
            rows=slice(split.offsets[rank], split.offsets[rank] + split.sizes[rank]),
            global_batch=split.global_batch, seed=spec.training.seed, start_epoch=restored.epoch,
            epochs=spec.training.epochs,
        )
        model.fit(per_replica(strategy, dataset, world), epochs=spec.training.epochs, initial_epoch=restored.epoch,
                  steps_per_epoch=config["steps"], callbacks=callbacks, verbose=0)

    # -- the final model (after any best-weight restore) on the whole test set, globally
    test = tf_callbacks.global_metrics(
        collective, ShardEvaluator(model, arrays["x_test"][part["test"]], arrays["y_test"][part["test"]])
    )
    # No checkpoint here: the last epoch's checkpoint stays the one a resume starts from.
    final = FinalReport(test_loss=test["loss"], test_accuracy=test["accuracy"], workers=world)
    ray.train.report(final.metrics())
    if rank == 0:
        final.model_keras = export.keras_file(model, spec.model)
    driver.post(rank, final)
