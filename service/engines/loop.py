"""The per-worker training loop: what every Ray Train worker runs, whatever the engine.

`train_loop_per_worker(config)` gets the resolved spec and references to the data arrays, asks the
spec's engine (`contract.EngineWorker`) for the model, resumes from the latest checkpoint if Ray
Train hands one over, trains under the shared callbacks (global metrics -> the stock deciders ->
consensus -> the replica check -> the report and checkpoint of every epoch), and finally evaluates
the test set globally; rank 0 sends the final model to the driver as a `.keras` file.

Example (what `service/train.py` builds)::

    DataParallelTrainer(engine.loop, train_loop_config={"spec": spec.model_dump(), "data": refs, "steps": 42,
                                                        "progress": queue, "attempt": "a1b2"}, ...)
"""

from __future__ import annotations

import importlib

import ray
import ray.train

from service.checkpoints import layout
from service import data as data_lib
from service.core import deciding, replicas, reporting
from service.core.messages import FinalReport
from service.spec import TrainSpec


def engine_worker(spec: TrainSpec, rank: int, workers: int):
    """The spec's engine for this worker (`Engine.worker_path`): its module, and so its framework,
    is imported here, in the worker, never on the driver."""
    from service.engines import ENGINES

    module, _, name = ENGINES[spec.training.engine].worker_path.partition(":")
    return getattr(importlib.import_module(module), name)(spec, rank, workers)


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry point.

    `config`: {"spec": resolved spec dict, "data": {name: ObjectRef}, "classes": the number of
    classes, "steps": steps per epoch, "progress": a ray.util.queue.Queue for the driver, or None,
    "attempt": an id of the driver invocation, "in_process": True when the driver's process runs
    the loop itself, as rank 0 of 1 (`train.InProcess`; data as arrays, a queue.Queue)}.
    """
    # -- who this worker is, and its shards of the data
    spec = TrainSpec.model_validate(config["spec"])
    # In process (`train.InProcess`, a study's warm trial): rank 0 of 1, without Ray Train.
    ray_train = not config.get("in_process")
    context = ray.train.get_context() if ray_train else None
    rank, workers = (context.get_world_rank(), context.get_world_size()) if context else (0, 1)
    driver = reporting.DriverQueue(config.get("progress"))
    engine = engine_worker(spec, rank, workers)
    device = engine.prepare_devices()
    driver.post(rank, reporting.whereabouts(rank, device, workers))
    arrays = {k: ray.get(v) if isinstance(v, ray.ObjectRef) else v for k, v in config["data"].items()}
    # Every rank holds all training examples and takes its rows of each global batch; validation
    # and test are evaluated in disjoint shards and summed (deciding.GlobalMetrics).
    split = data_lib.BatchSplit.of(spec.training.batch_size, workers)
    part = {name: data_lib.shard(len(arrays[f"x_{name}"]), workers, rank) for name in ("val", "test")}

    # -- the model, from the latest checkpoint when Ray Train restarts the run
    model = engine.build_model(split, arrays["x_train"].shape[1:], config["classes"])
    restored, traces = layout.Restored(), {}
    saved = ray.train.get_checkpoint() if ray_train else None
    if saved is not None:
        with saved.as_directory() as directory:
            restored = engine.restore(directory, model)
            traces = layout.read_traces(directory)

    # -- callbacks: global metrics -> stock deciders -> consensus -> replica check -> report (-> drill)
    kinds = engine.callbacks
    collective = engine.collective()
    val = engine.evaluator(model, arrays["x_val"][part["val"]], arrays["y_val"][part["val"]])
    deciders = deciding.build(spec, collective, rank, val, restored.callbacks, kinds.kinds)
    # Rank 0 carries the traces of ranks an earlier, larger worker group had.
    former = {r: t for r, t in traces.items() if r >= workers} if rank == 0 else {}
    checks = replicas.replica_callbacks(spec, collective, rank, deciders.consensus, kinds, engine.state_arrays)
    callbacks = [*deciders.as_list(), *checks,
                 kinds.ReportEachEpoch(rank, deciders, driver, traces.get(rank, []), former, save=engine.save,
                                       ray_train=ray_train),
                 *reporting.drills(spec, rank, config.get("attempt", ""), kinds)]

    # -- train, unless the checkpoint is of a run that already ended
    stopper = restored.callbacks.get("early_stopping", {})
    if stopper.get("stopped_epoch") and stopper.get("best_weights") is not None:
        model.set_weights(stopper["best_weights"])  # what EarlyStopping's on_train_end did before the crash
    if restored.epoch < spec.training.epochs and not stopper.get("stopped_epoch"):
        engine.train(model, callbacks, steps=config["steps"], x=arrays["x_train"], y=arrays["y_train"], split=split,
                     start=restored.epoch)

    # -- the final model (after any best-weight restore) on the whole test set, globally
    test = deciding.global_metrics(
        collective, engine.evaluator(model, arrays["x_test"][part["test"]], arrays["y_test"][part["test"]]))
    # No checkpoint here: the last epoch's checkpoint stays the one a resume starts from.
    final = FinalReport(test_loss=test["loss"], test_accuracy=test["accuracy"], workers=workers)
    if ray_train:
        ray.train.report(final.metrics())
    if rank == 0:
        final.model_keras = engine.keras_file(model)
    driver.post(rank, final)
