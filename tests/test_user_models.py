"""A user's Keras model (`model.build`), trained with every guarantee the seed's MLP has, on both
engines: a small CNN from a test module (`tests/support/models.py`) on real MNIST images.

The references are the seed model's: each epoch's checkpoint scored by the same CNN built with
tf_keras in this process (the checkpoint's names are every engine's), the decisions replayed
through the stock callbacks of the run's own Keras, and a run that never failed.
"""

from __future__ import annotations

import csv
import time

import numpy as np
import pytest

from service import data as data_lib
from service import train
from tests.support.engines import ENGINES
from tests.support.limits import JAX_RESTART_WITHIN_S
from tests.support.project import PROJECT_ROOT, plateau, python_env
from tests.support.runs import (by_epoch, checkpoints, exact_metrics, make_spec, model_at, score_model_file,
                                without_seconds)
from tests.support.stock import stock_replay_on

CNN = ("model.build=tests.support.models:cnn", "model.kwargs={filters: 4}")
DECIDING = ("reduce_lr={monitor: val_loss, factor: 0.5, patience: 0, min_delta: 0.1}",
            "early_stopping={monitor: val_accuracy, patience: 2, restore_best_weights: true}")


def n1999(tmp_path) -> str:
    """3,000 training images and 1,999 test images (validated on the test set): 667 + 666 + 666
    validation images on 3 workers, 1,000 + 999 on 2."""
    sample = data_lib.load("sample", "test")
    source = tmp_path / "n1999.npz"
    np.savez(source, x_train=sample.x_train[:3000].reshape(-1, 28, 28), y_train=sample.y_train[:3000],
             x_test=sample.x_test[:1999].reshape(-1, 28, 28), y_test=sample.y_test[:1999])
    return str(source)


def cnn_on_three_workers(tmp_path, engine: str) -> tuple[str, ...]:
    """The CNN on 3 workers, uneven shards, with both deciders."""
    return (f"data.source={n1999(tmp_path)}", "data.validation=test", "training.epochs=4", "training.batch_size=200",
            "scaling.num_workers=3", "checkpoint.keep=null", f"training.engine={engine}", *CNN, *DECIDING)


@pytest.fixture(scope="module", params=ENGINES)
def cnn_run(request, tmp_path_factory, module_ray):
    """`cnn_on_three_workers`, trained once per engine: the run that never failed."""
    tmp = tmp_path_factory.mktemp("cnn")
    spec = make_spec(tmp, *cnn_on_three_workers(tmp, request.param), name="cnn")
    result = train.run(spec, echo=lambda line: None)
    assert result.ok, result.error
    return spec, result


@pytest.mark.slow
def test_a_cnn_on_three_workers_sees_the_exact_global_metrics_and_its_ranks_agree(cnn_run):
    spec, result = cnn_run
    splits = data_lib.load(spec.data.source, "test")
    kept = checkpoints(spec)
    assert sorted(kept) == [r["epoch"] for r in result.history]
    for epoch, rows in by_epoch(result.decisions).items():
        assert sorted(r["rank"] for r in rows) == [0, 1, 2]
        model = model_at(spec, kept[epoch], input_shape=splits.x_val.shape[1:])
        loss, accuracy = exact_metrics(model, splits.x_val, splits.y_val)
        first = {k: v for k, v in rows[0].items() if k != "rank"}
        for row in rows:
            assert row["values"]["val_accuracy"] == accuracy  # counts: exact
            assert row["values"]["val_loss"] == pytest.approx(loss, rel=1e-5)  # float32 sums
            assert {k: v for k, v in row.items() if k != "rank"} == first  # G2: one decision
    assert result.summary["ranks_agree"] is True
    assert result.summary["replicas_identical"] is True  # every rank's every variable, every epoch


@pytest.mark.slow
def test_a_cnn_decides_as_stock_keras_replayed_on_its_global_metrics(cnn_run):
    spec, result = cnn_run
    rank0 = [r for r in result.decisions if r["rank"] == 0]
    lrs, stop_epoch, _ = stock_replay_on(spec.training.engine, spec, [r["values"] for r in rank0])
    assert [r["lr_after"] for r in rank0] == lrs
    assert result.summary["stop_epoch"] == stop_epoch
    assert result.summary["lr_reductions"], "no LR reduction: retune DECIDING"


@pytest.mark.slow
def test_a_killed_cnn_worker_restarts_in_fresh_processes_and_resumes_to_the_run_that_never_failed(cnn_run, tmp_path):
    """Rank 1's process dies after epoch 2's report; Ray Train starts a new worker group (fresh
    processes; on keras_jax a new JAX coordinator), which resumes from the checkpoint: weights,
    Adam, the learning rate and the deciders' state. Same batches (epoch-keyed order), same
    dropout masks (step-keyed): the result is bit-identical to `cnn_run`, which never failed."""
    reference_spec, reference = cnn_run
    engine = reference_spec.training.engine
    spec = make_spec(tmp_path, *cnn_on_three_workers(tmp_path, engine), "debug.fail_at_epoch=2", "debug.fail_rank=1",
                     "scaling.max_failures=1", name="cnn")
    timed: list[tuple[float, str]] = []  # (when, line) of every line the run printed
    result = train.run(spec, echo=lambda line: timed.append((time.monotonic(), line)))
    lines = [line for _, line in timed]
    assert result.ok, result.error
    placed = [when for when, line in timed if line.startswith("workers: ")]
    assert len(placed) == 2, lines  # a second worker group started
    if engine == "keras_jax":
        # From epoch 2's line (rank 1 dies right after that report) to the new group's placement:
        # the survivors did not wait for JAX's heartbeat timeout.
        failed = next(when for when, line in timed if line.startswith("epoch 2/"))
        assert placed[1] - failed < JAX_RESTART_WITHIN_S, lines
    assert without_seconds(result.history) == without_seconds(reference.history)
    assert result.decisions == reference.decisions
    assert result.summary["test_accuracy"] == reference.summary["test_accuracy"]
    assert result.summary["lr_reductions"] == reference.summary["lr_reductions"]


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
def test_a_cnn_replica_that_drifts_fails_the_run_at_that_epoch(engine, tmp_path, module_ray):
    spec = make_spec(tmp_path, "training.epochs=3", f"training.engine={engine}", *CNN,
                     "debug.perturb_at_epoch=2", "debug.perturb_rank=1", name="drift")
    result = train.run(spec, echo=lambda line: None)
    assert not result.ok
    assert "replicas differ after epoch 2: rank 1's model/" in result.error


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
def test_the_seed_mlp_through_the_builder_path_is_the_default_run(engine, tmp_path, module_ray):
    common = ("training.epochs=2", f"training.engine={engine}", *DECIDING)
    default = train.run(make_spec(tmp_path / "default", *common, name="seed"), echo=lambda line: None)
    # A builder's MNIST keeps its 28x28 shape; the seed's MLP takes the 784 pixels in a row.
    built = train.run(make_spec(tmp_path / "built", *common, "model.build=tests.support.models:seed_mlp_by_name",
                                "data.shape=[784]", name="seed"), echo=lambda line: None)
    assert default.ok and built.ok, (default.error, built.error)
    assert without_seconds(built.history) == without_seconds(default.history)
    assert built.decisions == default.decisions


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
def test_a_feature_vector_model_trains_on_three_classes_of_generated_data(engine, tmp_path, module_ray):
    """12 float features, 3 classes, an MLP from examples/features.py on 2 workers: exact global
    metrics and one decision per epoch, as for images."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 12))

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 3, n)
        return (centres[y] + rng.normal(scale=1.5, size=(n, 12))).astype("float32"), y

    (x_train, y_train), (x_test, y_test) = draw(2400), draw(601)
    np.savez(tmp_path / "blobs.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    spec = make_spec(tmp_path, f"data.source={tmp_path / 'blobs.npz'}", "data.validation=test", "training.epochs=3",
                     f"training.engine={engine}", "checkpoint.keep=null", "reduce_lr={monitor: val_loss, patience: 0}",
                     f"model.build={PROJECT_ROOT / 'examples' / 'features.py'}:build", "model.kwargs={units: [16]}",
                     name="blobs")
    result = train.run(spec, echo=lambda line: None)
    assert result.ok, result.error
    assert result.summary["data"]["n_val"] == 601
    kept = checkpoints(spec)
    for epoch, rows in by_epoch(result.decisions).items():
        loss, accuracy = exact_metrics(model_at(spec, kept[epoch], input_shape=(12,), classes=3), x_test, y_test)
        assert [r["rank"] for r in rows] == [0, 1]
        for row in rows:  # 301 + 300 validation rows
            assert row["values"]["val_accuracy"] == accuracy
            assert row["values"]["val_loss"] == pytest.approx(loss, rel=1e-5)
    assert result.summary["test_accuracy"] > 0.6  # the classes are learnable: three of 0.33 is chance
    scored = score_model_file(engine, result.out_dir / "model.keras", spec.data.source, result.out_dir / "spec.yaml")
    assert scored["accuracy"] == result.summary["test_accuracy"]
    assert "Dropout" in scored["layers"] and not any("Seeded" in name for name in scored["layers"])


@pytest.mark.slow
def test_a_study_varies_a_builder_kwarg(tmp_path, module_ray):
    from service import compare
    from service.spec import load_spec

    (tmp_path / "study.yaml").write_text(
        "kind: compare\nname: filters\nbase:\n  model: {build: 'tests.support.models:cnn'}\n"
        "  training: {epochs: 1, batch_size: 200}\n  data: {source: sample}\n"
        f"output: {tmp_path / 'results'}\ngrid:\n  model.kwargs.filters: [2, 4]\nseeds: [7]\n"
        "workers_per_trial: 1\n")
    spec = load_spec(tmp_path / "study.yaml")
    assert compare.run(spec, address=None, verbose=False, fresh=False, echo=lambda line: None) == 0
    rows = list(csv.DictReader((tmp_path / "results" / "filters" / "comparison.csv").open()))
    assert [(r["model.kwargs.filters"], r["status"]) for r in rows] == [("2", "ok"), ("4", "ok")]
    assert rows[0]["test_accuracy"] != rows[1]["test_accuracy"]  # two models, not one twice


@pytest.mark.parametrize("builder, line", [
    ("broken", "building the model failed: ValueError: filters must be positive"),
    ("one_class_too_many", "the model gives outputs of shape (11,) per example, not (10,): its last layer must "
                           "give one probability per class (Dense(10, activation='softmax'))"),
])
def test_a_builder_that_cannot_train_on_the_data_is_one_line_before_ray_starts(builder, line, tmp_path):
    # The module is reached as a user reaches theirs: PYTHONPATH names the folder that holds it.
    done = plateau("train", "--data", "sample", "--set", f"model.build=tests.support.models:{builder}",
                   cwd=tmp_path, env=python_env())
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1] == f"plateau: model.build tests.support.models:{builder}: {line}"
    assert not (tmp_path / "results").exists()
