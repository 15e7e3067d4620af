"""The keras_jax engine's per-worker training loop: what every Ray Train worker runs.

`train_loop_per_worker(config)` takes the same config as the tf_keras engine's loop
(`service/engines/tf_keras/worker.py`) and sends the driver the same messages: it joins the other processes
(`jax.distributed`, gloo collectives between CPUs; nothing with one worker), builds the seed's
model in Keras 3, resumes from the latest checkpoint if Ray Train hands one over, trains epoch
by epoch (`model.Epoch`) under the shared callbacks (`service/deciding.py`: global metrics,
stock Keras 3 ReduceLROnPlateau and EarlyStopping, consensus; `service/replicas.py`: the replica
check; `service/reporting.py`: the report and checkpoint of every epoch), then evaluates the test set globally; rank 0 sends the
final model as a Keras 3 `.keras` file.

No `model.fit` and no `model.evaluate`: Keras's evaluate across processes hangs or gives each rank
other wrong values when shards differ in size, so validation is this engine's own shard sums,
all-gathered, as in the tf_keras engine.
"""

from __future__ import annotations

import os

from service import deciding, replicas, reporting
from service.checkpoints import layout as checkpoint
from service import data as data_lib
from service.engines import KERAS_ON_JAX
from service.engines.keras_jax.backend import COORDINATOR, PROCESS_ID, PROCESSES
from service.messages import FinalReport
from service.spec import TrainSpec


class DeviceError(RuntimeError):
    """A worker cannot use the device the spec asks for: one line naming the rank and the node."""


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


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry point (the config of the tf_keras engine's loop)."""
    import ray
    import ray.train

    # -- who this worker is, and its shards of the data
    spec = TrainSpec.model_validate(config["spec"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    driver = reporting.DriverQueue(config.get("progress"))
    use_jax(spec.scaling.use_gpu)
    join_processes(world, rank, spec.scaling.use_gpu)
    device = prepare_devices(spec.scaling.use_gpu, rank)
    driver.post(rank, reporting.whereabouts(rank, device, world))
    from service.engines.keras_jax import callbacks as jax_callbacks
    from service.engines.keras_jax import export
    from service.engines.keras_jax import model as jax_model
    from service.engines.keras_jax import state
    from service.engines.keras_jax.collective import ProcessCollective

    arrays = {k: ray.get(v) if isinstance(v, ray.ObjectRef) else v for k, v in config["data"].items()}
    split = data_lib.BatchSplit.of(spec.training.batch_size, world)
    part = {name: data_lib.shard(len(arrays[f"x_{name}"]), world, rank) for name in ("val", "test")}

    # -- the model, from the latest checkpoint when Ray Train restarts the run
    model = jax_model.build_model(spec.model, seed=spec.training.seed)
    restored, traces = checkpoint.Restored(), {}
    saved = ray.train.get_checkpoint()
    if saved is not None:
        with saved.as_directory() as directory:
            restored = state.restore(directory, model)
            traces = checkpoint.read_traces(directory)

    # -- callbacks: global metrics -> stock deciders -> consensus -> report (-> drill)
    collective = ProcessCollective(world)
    val = jax_model.ShardEvaluator(model, arrays["x_val"][part["val"]], arrays["y_val"][part["val"]])
    deciders = deciding.build(spec, collective, rank, val, restored.callbacks, jax_callbacks.KERAS_JAX)
    former = {r: t for r, t in traces.items() if r >= world} if rank == 0 else {}
    checks = replicas.replica_callbacks(spec, collective, rank, deciders.consensus, jax_callbacks,
                                        state.state_arrays)
    callbacks = [*deciders.as_list(), *checks,
                 jax_callbacks.ReportEachEpoch(rank, deciders, driver, traces.get(rank, []), former,
                                               save=state.save),
                 *reporting.drills(spec, rank, config.get("attempt", ""), jax_callbacks)]

    # -- train, unless the checkpoint is of a run that already ended
    stopper = restored.callbacks.get("early_stopping", {})
    if stopper.get("stopped_epoch") and stopper.get("best_weights") is not None:
        model.set_weights(stopper["best_weights"])  # what EarlyStopping's on_train_end did before the crash
    if restored.epoch < spec.training.epochs and not stopper.get("stopped_epoch"):
        train(model, callbacks, spec, config["steps"], arrays, split, rank, start=restored.epoch)

    # -- the final model (after any best-weight restore) on the whole test set, globally
    test = deciding.global_metrics(
        collective, jax_model.ShardEvaluator(model, arrays["x_test"][part["test"]], arrays["y_test"][part["test"]]))
    final = FinalReport(test_loss=test["loss"], test_accuracy=test["accuracy"], workers=world)
    ray.train.report(final.metrics())
    if rank == 0:
        final.model_keras = export.keras_file(model)
    driver.post(rank, final)


def train(model: object, callbacks: list, spec: TrainSpec, steps: int, arrays: dict, split: object, rank: int,
          start: int) -> None:
    """Epochs `start` .. training.epochs under `callbacks`, as `fit` would drive them: each epoch's
    logs go through the callbacks in order, and a stop decided at an epoch's end ends training."""
    import keras

    from service.engines.keras_jax import model as jax_model

    epoch_fn = jax_model.Epoch(model, jax_model.make_mesh(), split, rank, spec.training.seed, spec.model.dropout)
    hooks = keras.callbacks.CallbackList(callbacks, model=model, epochs=spec.training.epochs, steps=steps, verbose=0)
    x, y = arrays["x_train"], arrays["y_train"]
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
