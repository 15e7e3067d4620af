"""What stock tf_keras does under MultiWorkerMirroredStrategy on Ray Train, and plateau on the same data.

The stock job is what a user following Ray's TensorFlow example writes: `TensorflowTrainer`,
`TF_USE_LEGACY_KERAS=1` in the workers' runtime env, `import tf_keras as keras`, MWMS, the seed
model, each worker's own shard as a `tf.data` dataset built from its arrays and batched with the
global batch (200), auto-sharding off (`prepare_dataset_shard`: the shards are already disjoint,
as Ray Data's are), and `model.fit(train, validation_data=val_shard, callbacks=[recorder])`.
What it shows:

* MWMS sums Keras's metric state (total, count) over the workers, so every rank's `logs` hold
  the same `val_accuracy`: stock callbacks do not disagree.
* That value is not the whole validation set's. `fit` hands the shard to
  `experimental_distribute_dataset`, which takes each batch of 200 as global and cuts it into
  per-replica batches of 100, while Keras counts the validation steps on the undistributed
  dataset (ceil(shard / 200)). Each worker therefore evaluates only the first
  ceil(shard / 200) * 100 images of its shard: half of it.
* When the shards have different numbers of batches (401 and 400 images: 3 and 2), the ranks run
  different numbers of steps, the collectives no longer pair up and the job dies in its first
  validation. It is the step counts, hence the batch counts, that must differ.

plateau, on the same uneven shards, records the exact whole-set value and finishes.
Run with -s to see the measured numbers.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import numpy as np
import pytest
import ray
import ray.train
import tensorflow as tf
import tf_keras as keras
from ray.job_config import JobConfig
from ray.train import RunConfig, ScalingConfig
from ray.train.tensorflow import TensorflowTrainer, prepare_dataset_shard
from ray.util.queue import Queue

from service import data as data_lib
from service import train
from tests.support.runs import by_epoch, checkpoints, exact_metrics, make_spec, model_at

pytestmark = pytest.mark.slow

WORKERS = 2
GLOBAL_BATCH = 200  # the seed's batch; Ray's example batches every worker's dataset with it
EPOCHS = 2
SEED = 7
EVEN_VAL = 2000  # the sample's whole test split: shards of 1000 and 1000, 5 batches each
UNEVEN_VAL = 801  # shards of 401 and 400: 3 batches against 2
README_SECTION = ("stock tf_keras now validates on the whole set under MultiWorkerMirroredStrategy: "
                  "revisit README.md 'Why global metrics matter' and this module's docstring")


def sample():
    return data_lib.load("sample", "test")


def stock_model() -> keras.Model:
    """The seed's model exactly as the seed wrote it (stock Dropout, 'normal' initialisers)."""
    keras.utils.set_random_seed(SEED)
    layers = keras.layers
    model = keras.Sequential([
        keras.Input(shape=(784,)),
        layers.Dense(784, activation="relu", kernel_initializer="normal"),
        layers.Dropout(0.5),
        layers.Dense(10, activation="softmax", kernel_initializer="normal"),
    ])
    model.compile(loss="categorical_crossentropy", optimizer=keras.optimizers.Adam(learning_rate=0.01),
                  metrics=["accuracy"])
    return model


def shard_dataset(x, y, shuffle: bool):
    """One worker's shard as Ray's example builds it: batched with the GLOBAL batch, auto-sharding off."""
    ds = tf.data.Dataset.from_tensor_slices((x.astype("float32") / 255.0, keras.utils.to_categorical(y, 10)))
    if shuffle:
        ds = ds.shuffle(len(x), seed=SEED)
    return prepare_dataset_shard(ds.batch(GLOBAL_BATCH))


class Recorder(keras.callbacks.Callback):
    """Sends each epoch's logs as this rank's callbacks got them; rank 0 adds the weights, so the
    driver can score exactly the model those logs describe."""

    def __init__(self, rank: int, queue):
        super().__init__()
        self.rank, self.queue = rank, queue

    def on_epoch_end(self, epoch, logs=None):
        weights = self.model.get_weights() if self.rank == 0 else None
        self.queue.put({"rank": self.rank, "epoch": epoch + 1,
                        "logs": {k: float(v) for k, v in (logs or {}).items()}, "weights": weights})


def stock_loop(config: dict) -> None:
    """Each Ray Train worker: the stock pattern, nothing of plateau's."""
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    splits = sample()
    train_part = data_lib.shard(len(splits.x_train), world, rank)
    val_part = data_lib.shard(config["n_val"], world, rank)
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    with strategy.scope():
        model = stock_model()
    model.fit(shard_dataset(splits.x_train[train_part], splits.y_train[train_part], shuffle=True),
              validation_data=shard_dataset(splits.x_val[val_part], splits.y_val[val_part], shuffle=False),
              epochs=EPOCHS, callbacks=[Recorder(rank, config["queue"])], verbose=0)


def run_stock(n_val: int, storage: Path):
    """Runs the stock job on the first n_val test images; returns (records, error or None)."""
    queue = Queue()
    trainer = TensorflowTrainer(
        stock_loop,
        train_loop_config={"n_val": n_val, "queue": queue},
        scaling_config=ScalingConfig(num_workers=WORKERS),
        run_config=RunConfig(name=f"stock-{n_val}", storage_path=str(storage),
                             worker_runtime_env={"env_vars": {"TF_USE_LEGACY_KERAS": "1"}}),
    )
    error = None
    try:
        error = trainer.fit().error
    except Exception as exc:  # noqa: BLE001 - Ray Train V2 raises the workers' failure, of any type, from fit()
        error = exc
    records = []
    while not queue.empty():
        records.append(queue.get())
    return records, error


def evaluated_by_stock(n_val: int) -> np.ndarray:
    """Indices of the validation images the stock replicas actually evaluate.

    Keras runs ceil(shard / GLOBAL_BATCH) validation steps (the undistributed dataset's
    cardinality); each step gives a replica GLOBAL_BATCH / WORKERS images, taken in order.
    """
    seen = []
    for rank in range(WORKERS):
        part = data_lib.shard(n_val, WORKERS, rank)
        size = part.stop - part.start
        steps = math.ceil(size / GLOBAL_BATCH)
        seen.append(np.arange(part.start, part.start + min(size, steps * (GLOBAL_BATCH // WORKERS))))
    return np.concatenate(seen)


def plateau_epoch_model(spec, epoch: int) -> keras.Model:
    """The seed model with the weights plateau checkpointed at the end of `epoch`.

    The only place this module depends on plateau's checkpoint layout.
    """
    return model_at(spec, checkpoints(spec)[epoch])


@pytest.fixture(scope="module")
def ray_session():
    """One embedded Ray for the module; plateau's `train.run` joins it rather than starting its own.

    The workers unpickle `stock_loop` by importing this module, so they need the project on their path.
    """
    root = Path(__file__).resolve().parents[1]
    ray.init(num_cpus=WORKERS + 1, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
             job_config=JobConfig(code_search_path=[str(root)]))
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def stock_even(ray_session, tmp_path_factory):
    records, error = run_stock(EVEN_VAL, tmp_path_factory.mktemp("stock-even"))
    assert error is None, f"the stock job with even shards failed: {error}"
    return records


def test_stock_ranks_agree_on_a_val_accuracy_of_half_the_validation_set(stock_even):
    splits = sample()
    x, y = splits.x_val[:EVEN_VAL], splits.y_val[:EVEN_VAL]
    shards = [data_lib.shard(EVEN_VAL, WORKERS, r) for r in range(WORKERS)]
    seen = evaluated_by_stock(EVEN_VAL)
    assert len(seen) == EVEN_VAL // 2  # the claim below is about half the set
    epochs = by_epoch(stock_even)
    assert sorted(epochs) == list(range(1, EPOCHS + 1))
    accuracy_differs = []
    for epoch, rows in sorted(epochs.items()):
        assert sorted(r["rank"] for r in rows) == list(range(WORKERS))
        logs = [r["logs"] for r in sorted(rows, key=lambda r: r["rank"])]
        model = stock_model()
        model.set_weights(next(r["weights"] for r in rows if r["rank"] == 0))
        whole_loss, whole_accuracy = exact_metrics(model, x, y)
        per_shard = [exact_metrics(model, x[s], y[s])[1] for s in shards]
        seen_loss, seen_accuracy = exact_metrics(model, x[seen], y[seen])
        print(f"\nstock epoch {epoch}: val_accuracy per rank {[r['val_accuracy'] for r in logs]}, "
              f"val_loss per rank {[r['val_loss'] for r in logs]}; same weights exactly: whole set "
              f"{whole_accuracy} (loss {whole_loss:.6f}), per shard {per_shard}, "
              f"the {len(seen)} images the replicas evaluate {seen_accuracy} (loss {seen_loss:.6f})")
        # MWMS reduces metric state across workers: every rank's callbacks get the same numbers.
        for other in logs[1:]:
            assert (other["val_accuracy"], other["val_loss"]) == (logs[0]["val_accuracy"], logs[0]["val_loss"])
        # ...but not the whole validation set's. The loss cannot match by chance; the accuracy
        # (a count out of 1000 against one out of 2000) can, so it must differ in some epoch.
        assert logs[0]["val_loss"] != pytest.approx(whole_loss, rel=1e-4), README_SECTION
        accuracy_differs.append(logs[0]["val_accuracy"] != pytest.approx(whole_accuracy, abs=1e-6))
        # Why: they are exactly the metrics of the first half of each shard.
        assert logs[0]["val_accuracy"] == pytest.approx(seen_accuracy, abs=1e-6)
        assert logs[0]["val_loss"] == pytest.approx(seen_loss, rel=1e-5)
    assert any(accuracy_differs), README_SECTION


@pytest.mark.heavy
def test_stock_job_dies_when_the_shards_have_different_batch_counts(ray_session, tmp_path):
    sizes = [len(range(UNEVEN_VAL)[data_lib.shard(UNEVEN_VAL, WORKERS, r)]) for r in range(WORKERS)]
    assert sizes == [401, 400]
    assert [math.ceil(n / GLOBAL_BATCH) for n in sizes] == [3, 2]
    records, error = run_stock(UNEVEN_VAL, tmp_path)
    assert error is not None, "the stock job survived shards with different batch counts"
    # Ray Train shortens the workers' tracebacks in its own message; each rank's exception is whole.
    failures = getattr(error, "worker_failures", None) or {}
    text = "\n".join([str(error), *(str(failures[rank]) for rank in sorted(failures))])
    mismatch = re.search(r"Collective instance \d+ expected type \d+ and data_type (\d+) "
                         r"but got type \d+ and data_type (\d+)", text)
    print(f"\nstock job on val shards {sizes}: {type(error).__name__} from ranks {sorted(failures)}: "
          f"{mismatch.group(0) if mismatch else text[-500:]}")
    # The rank with more steps is still all-reducing the distributed iterator's int64 count of
    # replicas with data when the other has moved on to a float all-reduce: same instance, two dtypes.
    assert mismatch, text
    assert sorted(mismatch.groups()) == ["1", "9"]  # DT_FLOAT and DT_INT64
    assert records == []  # it died in the first validation, before any epoch's end


@pytest.mark.heavy
def test_plateau_on_the_same_uneven_shards_records_the_exact_value_and_finishes(ray_session, tmp_path):
    splits = sample()
    source = tmp_path / "uneven.npz"
    np.savez(source, x_train=splits.x_train.reshape(-1, 28, 28), y_train=splits.y_train,
             x_test=splits.x_val[:UNEVEN_VAL].reshape(-1, 28, 28), y_test=splits.y_val[:UNEVEN_VAL])
    spec = make_spec(tmp_path, f"data.source={source}", "data.validation=test", f"training.epochs={EPOCHS}",
                     f"training.batch_size={GLOBAL_BATCH}", "checkpoint.keep=null", name="uneven-plateau")
    result = train.run(spec, echo=lambda line: None)
    assert result.ok, result.error
    assert [r["epoch"] for r in result.history] == list(range(1, EPOCHS + 1))
    val = data_lib.load(spec.data.source, "test")
    assert len(val.x_val) == UNEVEN_VAL
    for epoch, rows in sorted(by_epoch(result.decisions).items()):
        loss, accuracy = exact_metrics(plateau_epoch_model(spec, epoch), val.x_val, val.y_val)
        print(f"\nplateau epoch {epoch}: val_accuracy per rank {[r['values']['val_accuracy'] for r in rows]}; "
              f"its checkpoint on all {UNEVEN_VAL} images: {accuracy} (loss {loss:.6f})")
        assert sorted(r["rank"] for r in rows) == list(range(WORKERS))
        for row in rows:
            assert row["values"]["val_accuracy"] == accuracy
            assert row["values"]["val_loss"] == pytest.approx(loss, rel=1e-6)
