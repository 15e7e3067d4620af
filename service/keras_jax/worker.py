"""The keras_jax engine's per-worker training loop: what every Ray Train worker runs.

`train_loop_per_worker(config)` takes the same config as the tf_keras engine's loop
(`service/worker.py`) and sends the driver the same messages: it joins the other processes
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
import tempfile
from pathlib import Path


from service import checkpoint, deciding, replicas, reporting
from service import data as data_lib
from service.keras_jax.backend import COORDINATOR, PROCESS_ID, PROCESSES
from service.messages import FinalReport
from service.report import MODEL_FILE
from service.spec import TrainSpec


class DeviceError(RuntimeError):
    """A worker cannot use the device the spec asks for: one line naming the rank and the node."""


def use_jax() -> None:
    """Keras 3 on JAX's CPUs in this process: before Keras is first imported (the runtime env sets
    the variable for Ray's workers; Ray Train's local mode runs the loop in the driver's process)."""
    os.environ.setdefault("KERAS_BACKEND", "jax")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import keras

    if keras.backend.backend() != "jax":
        raise RuntimeError(f"Keras was imported on its {keras.backend.backend()} backend before the keras_jax "
                           "engine's loop: set KERAS_BACKEND=jax in this process")


def join_processes(world: int, rank: int) -> None:
    """One JAX runtime over the worker group: rank 0 coordinates (`backend.JaxWorkers` chose the
    address). Gloo carries the collectives between CPU processes."""
    import jax

    if world <= 1:
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=os.environ[COORDINATOR], num_processes=int(os.environ[PROCESSES]),
                               process_id=int(os.environ[PROCESS_ID]))
    if jax.process_index() != rank:
        raise RuntimeError(f"JAX process {jax.process_index()} is Ray Train rank {rank}")


def keras_file(model: object) -> bytes:
    """The model as the bytes of a Keras 3 .keras file (stock layers: anyone can load it)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, MODEL_FILE)
        model.save(path)
        return path.read_bytes()


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry point (the config of `service/worker.py`'s loop)."""
    import ray
    import ray.train

    # -- who this worker is, and its shards of the data
    spec = TrainSpec.model_validate(config["spec"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    driver = reporting.DriverQueue(config.get("progress"))
    if spec.scaling.use_gpu:  # the spec refuses it; a hand-made config still gets one line
        raise DeviceError(f"rank {rank} on {ray.util.get_node_ip_address()}: the keras_jax engine trains on CPUs")
    driver.post(rank, reporting.whereabouts(rank, "CPU", world))
    use_jax()
    join_processes(world, rank)
    from service.keras_jax import callbacks as jax_callbacks
    from service.keras_jax import model as jax_model
    from service.keras_jax.collective import ProcessCollective

    arrays = {k: ray.get(v) if isinstance(v, ray.ObjectRef) else v for k, v in config["data"].items()}
    split = data_lib.BatchSplit.of(spec.training.batch_size, world)
    part = {name: data_lib.shard(len(arrays[f"x_{name}"]), world, rank) for name in ("val", "test")}

    # -- the model, from the latest checkpoint when Ray Train restarts the run
    model = jax_model.build_model(spec.model, seed=spec.training.seed)
    restored, traces = checkpoint.Restored(), {}
    saved = ray.train.get_checkpoint()
    if saved is not None:
        with saved.as_directory() as directory:
            restored = jax_model.restore(directory, model)
            traces = checkpoint.read_traces(directory)

    # -- callbacks: global metrics -> stock deciders -> consensus -> report (-> drill)
    collective = ProcessCollective(world)
    val = jax_model.ShardEvaluator(model, arrays["x_val"][part["val"]], arrays["y_val"][part["val"]])
    deciders = deciding.build(spec, collective, rank, val, restored.callbacks, jax_callbacks.KERAS_JAX)
    former = {r: t for r, t in traces.items() if r >= world} if rank == 0 else {}
    checks = replicas.replica_callbacks(spec, collective, rank, deciders.consensus, jax_callbacks,
                                        jax_model.state_arrays)
    callbacks = [*deciders.as_list(), *checks,
                 jax_callbacks.ReportEachEpoch(rank, deciders, driver, traces.get(rank, []), former,
                                               save=jax_model.save),
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
        final.model_keras = keras_file(model)
    driver.post(rank, final)


def train(model: object, callbacks: list, spec: TrainSpec, steps: int, arrays: dict, split: object, rank: int,
          start: int) -> None:
    """Epochs `start` .. training.epochs under `callbacks`, as `fit` would drive them: each epoch's
    logs go through the callbacks in order, and a stop decided at an epoch's end ends training."""
    import keras

    from service.keras_jax import model as jax_model

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
