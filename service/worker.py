"""The per-worker training loop: what every Ray Train worker runs.

`train_loop_per_worker(config)` gets the resolved spec and references to the data arrays,
builds the seed's model under MultiWorkerMirroredStrategy (or no strategy with one process),
trains with the synchronised callbacks from `sync`, reports every epoch to Ray Train with a
checkpoint, and finally evaluates the test set globally.

Each epoch's checkpoint holds everything a resumed run needs to decide exactly as the run
that never stopped: weights, optimizer state (with the learning rate), the epoch, the
callbacks' state and EarlyStopping's best weights.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import ray
import ray.train
import tensorflow as tf
import tf_keras as keras

from service import data as data_lib
from service import report, sync
from service.model import build_model
from service.spec import TrainSpec

STATE_FILE = "state.json"
WEIGHTS_FILE = "weights.npz"


def _configure_threads(cpus: float) -> None:
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


def _make_strategy(world_size: int):
    if world_size <= 1:
        return tf.distribute.get_strategy()
    # RING over gRPC is the collective that works on CPU hosts and GPUs alike.
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=tf.distribute.experimental.CommunicationImplementation.RING
    )
    return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)


def _train_dataset(x, y, *, steps: int, batch: int, stream: int, start_epoch: int, epochs: int):
    """This rank's batches for epochs [start_epoch, epochs), one `steps`-long run per epoch.

    The order of epoch e is a pure function of (stream, e), so a resumed run sees the same
    batches as the run that never stopped.
    """
    x = tf.constant(x)
    y = tf.constant(y)
    n = int(x.shape[0])

    def one_epoch(epoch):
        order = tf.random.experimental.stateless_shuffle(tf.range(n), seed=tf.stack([tf.constant(stream, tf.int64), epoch]))
        return tf.data.Dataset.from_tensor_slices(tf.reshape(order[: steps * batch], [steps, batch]))

    def to_batch(idx):
        images = tf.cast(tf.gather(x, idx), tf.float32) / 255.0
        labels = tf.one_hot(tf.cast(tf.gather(y, idx), tf.int32), 10)
        return images, labels

    ds = tf.data.Dataset.range(start_epoch, epochs).flat_map(one_epoch)
    return ds.map(to_batch, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def _distribute(strategy, dataset, world_size: int):
    """Hand each rank's own batches to its replica as they are.

    `experimental_distribute_dataset` (what fit does with a plain dataset) treats a batch as
    global: it re-batches it across all replicas, so each rank would train on half of its
    batch and the global batch would silently halve. A dataset from a function is taken as
    per-replica, and our ranks already hold disjoint shards, so nothing is sharded again.
    """
    if world_size <= 1:
        return dataset
    return strategy.distribute_datasets_from_function(lambda _context: dataset)


def _save_checkpoint(directory: str, model, epoch: int, state: dict, best_weights) -> None:
    """Weights, Adam's slots and step, the learning rate (not among the optimizer's variables),
    the epoch, the callbacks' state and EarlyStopping's best weights."""
    arrays = {f"w{i}": w for i, w in enumerate(model.get_weights())}
    arrays.update({f"o{i}": v.numpy() for i, v in enumerate(model.optimizer.variables)})
    if best_weights is not None:
        arrays.update({f"b{i}": w for i, w in enumerate(best_weights)})
    arrays["lr"] = np.asarray(keras.backend.get_value(model.optimizer.learning_rate), dtype=np.float32)
    np.savez(os.path.join(directory, WEIGHTS_FILE), **arrays)
    Path(directory, STATE_FILE).write_text(json.dumps({"epoch": epoch, **state}))


def _load_checkpoint(directory: str, model):
    """Restore what `_save_checkpoint` wrote; returns (epoch, callback state, best weights).

    Call inside the strategy's scope: Adam creates its slots lazily, and they must be built
    as mirrored variables before they can be assigned.
    """
    state = json.loads(Path(directory, STATE_FILE).read_text())
    with np.load(os.path.join(directory, WEIGHTS_FILE)) as saved:
        n_weights = len(model.get_weights())
        model.set_weights([saved[f"w{i}"] for i in range(n_weights)])
        model.optimizer.build(model.trainable_variables)
        for i, variable in enumerate(model.optimizer.variables):
            variable.assign(saved[f"o{i}"])
        model.optimizer.learning_rate.assign(saved["lr"])
        best = [saved[f"b{i}"] for i in range(n_weights)] if "b0" in saved.files else None
    return int(state["epoch"]), state, best


class ReportEachEpoch(keras.callbacks.Callback):
    """Reports to Ray Train at every epoch's end; runs after the deciding callbacks.

    Every rank reports every epoch (the call is a barrier, so counts must match) with a
    checkpoint directory: rank 0 writes the weights and state, and every rank writes its own
    trace (its metrics and decision record of every epoch so far); Ray Train merges them into
    one checkpoint, so the checkpoint a run resumes from carries the history up to it. Then
    each rank sends its metrics to the driver's progress queue: Ray Train keeps only rank 0's
    metrics, and its in-process local mode calls no callbacks.
    """

    def __init__(self, rank: int, deciders: sync.DecisionCallbacks, debug, progress=None, attempt="",
                 trace=None):
        super().__init__()
        self.rank, self.deciders, self.debug, self.progress = rank, deciders, debug, progress
        self.attempt = attempt
        self.trace = list(trace or [])

    def on_epoch_end(self, epoch, logs=None):
        decision = self.deciders.consensus.last
        metrics = {
            "epoch": epoch + 1,
            "seconds": self.deciders.metrics.seconds,
            "lr": decision.lr_before,
            **decision.values,
            "decision": decision.to_json(),
        }
        self.trace.append(metrics)
        with tempfile.TemporaryDirectory() as tmp:
            report.write_trace(tmp, self.rank, self.trace)
            if self.rank == 0:
                stopper = self.deciders.early_stopping
                state = sync.callback_state(self.deciders.reduce_lr, stopper)
                _save_checkpoint(tmp, self.model, epoch + 1, state, stopper and stopper.best_weights)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        send(self.progress, self.rank, metrics)
        if self.debug.fail_at_epoch == epoch + 1 and self.rank == self.debug.fail_rank:
            _fail_once(self.attempt, epoch + 1, self.rank)


def send(progress, rank: int, metrics: dict) -> None:
    """Hand this rank's metrics to the driver (after they are checkpointed)."""
    if progress is not None:
        progress.put((rank, metrics))


def _fail_once(attempt: str, epoch: int, rank: int) -> None:
    """Fault injection: hard-kill this worker process (a real crash, not an exception).

    Once per driver invocation (`attempt`): the restarted worker group passes this epoch again
    and must not die again.
    """
    marker = Path(tempfile.gettempdir(), f"plateau-fail-{attempt}-{epoch}-{rank}")
    if marker.exists():
        return
    marker.write_text("killed")
    os._exit(17)


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry point.

    `config`: {"spec": resolved spec dict, "data": {name: ObjectRef}, "steps": steps per epoch,
    "progress": a ray.util.queue.Queue for the driver, or None, "attempt": an id of the driver
    invocation}.
    """
    spec = TrainSpec.model_validate(config["spec"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    _configure_threads(spec.scaling.cpus_per_worker)

    arrays = {k: ray.get(v) if isinstance(v, ray.ObjectRef) else v for k, v in config["data"].items()}
    train_part = data_lib.shard(len(arrays["x_train"]), world, rank)
    val_part = data_lib.shard(len(arrays["x_val"]), world, rank)
    test_part = data_lib.shard(len(arrays["x_test"]), world, rank)
    per_worker_batch = spec.training.batch_size // world

    strategy = _make_strategy(world)
    start_epoch, state, best_weights, trace = 0, {}, None, []
    with strategy.scope():
        model = build_model(spec.model, seed=spec.training.seed, rank=rank,
                            steps_per_execution=spec.training.steps_per_execution)
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as directory:
                start_epoch, state, best_weights = _load_checkpoint(directory, model)
                trace = report.read_trace(directory, rank)

    collective = sync.Collective(strategy, world)
    val = sync.ShardEvaluator(model, arrays["x_val"][val_part], arrays["y_val"][val_part])
    deciders = sync.decision_callbacks(spec, collective, rank, val, state, best_weights)
    progress = config.get("progress")
    reporter = ReportEachEpoch(rank, deciders, spec.debug, progress, config.get("attempt", ""), trace)
    callbacks = [*deciders.as_list(), reporter]

    stopped = bool(state.get("early_stopping", {}).get("stopped_epoch"))
    if stopped and best_weights is not None:
        model.set_weights(best_weights)  # what EarlyStopping's on_train_end did before the crash
    if start_epoch < spec.training.epochs and not stopped:
        dataset = _train_dataset(
            arrays["x_train"][train_part], arrays["y_train"][train_part],
            steps=config["steps"], batch=per_worker_batch,
            stream=spec.training.seed * 1009 + rank, start_epoch=start_epoch, epochs=spec.training.epochs,
        )
        model.fit(_distribute(strategy, dataset, world), epochs=spec.training.epochs, initial_epoch=start_epoch,
                  steps_per_epoch=config["steps"], callbacks=callbacks, verbose=0)

    # The final model (after any best-weight restore) on the whole test set, globally.
    test = sync.global_metrics(
        collective, sync.ShardEvaluator(model, arrays["x_test"][test_part], arrays["y_test"][test_part])
    )
    # No checkpoint here: the last epoch's checkpoint stays the one a resume starts from.
    final = {"final": True, "test_loss": test["loss"], "test_accuracy": test["accuracy"]}
    ray.train.report(final)
    send(progress, rank, final)
