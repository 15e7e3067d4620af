"""`plateau train` end to end: real Ray, real TensorFlow or JAX, two workers, real MNIST images.

One module-scoped run on uneven shards per engine (tf_keras, keras_jax) backs G1-G3 and the
exported model (it is the expensive part, and the default run's real training: `quick`); G4 gets
its own run in which the ranks deliberately see different metrics. The references are
engine-independent: each epoch's checkpointed weights are scored by a tf_keras model in this
process, and the decisions are replayed through the stock callbacks of the run's own Keras.
The module's in-process runs share one Ray (`module_ray`): their subject is not Ray's start.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from service import data as data_lib
from service import train
from service.report import files as run_files
from service.spec import load_spec
from tests.support.engines import ENGINES
from tests.support.project import plateau
from tests.support.runs import by_epoch, checkpoints, exact_metrics, make_spec, model_at, score_model_file
from tests.support.stock import stock_replay_on


DECIDING = (
    "reduce_lr={monitor: val_loss, factor: 0.5, patience: 1, min_delta: 0.02, cooldown: 0, min_lr: 0.002}",
    "early_stopping={monitor: val_accuracy, patience: 2, min_delta: 0.01, baseline: 0.5,"
    " restore_best_weights: true, start_from_epoch: 1}",
)


@pytest.fixture(scope="module", params=ENGINES)
def uneven_run(request, tmp_path_factory, odd_mnist, module_ray):
    tmp = tmp_path_factory.mktemp("uneven")
    spec = make_spec(tmp, f"data.source={odd_mnist}", "training.epochs=8", "checkpoint.keep=null",
                     f"training.engine={request.param}", *DECIDING, name="uneven")
    lines: list[str] = []  # what the run printed
    result = train.run(spec, echo=lines.append)
    assert result.ok, result.error
    return spec, result, lines


@pytest.fixture(scope="module")
def uneven_replay(uneven_run):
    """Stock callbacks of the run's own Keras fed rank 0's global metrics: (lrs, stop epoch, best epoch)."""
    spec, result, _ = uneven_run
    return stock_replay_on(spec.training.engine, spec, [r["values"] for r in result.decisions if r["rank"] == 0])


@pytest.mark.slow
@pytest.mark.quick
def test_files_follow_the_contract(uneven_run):
    spec, result, _ = uneven_run
    out = result.out_dir
    for name in ("spec.yaml", "history.csv", "decisions.jsonl", "summary.json", "curves.png"):
        assert (out / name).is_file(), name
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert load_spec(out / "spec.yaml").model_dump() == spec.model_dump()
    history = run_files.read_history(out / "history.csv")
    assert list(history[0]) == run_files.HISTORY_COLUMNS
    assert [r["epoch"] for r in history] == list(range(1, len(history) + 1))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"] == {"source": spec.data.source, "validation": "holdout",
                               "n_train": 5006, "n_val": 1001, "n_test": 999}
    assert summary["workers"] == 2 and summary["epochs_run"] == len(history)
    if spec.training.engine == "keras_jax":  # what the engine ran on, beside the default stack
        from importlib import metadata

        assert (summary["versions"]["keras"], summary["versions"]["jax"]) == (metadata.version("keras"),
                                                                             metadata.version("jax"))
    for row in run_files.read_decisions(out / "decisions.jsonl"):
        assert {"epoch", "rank", "values", "lr_before", "lr_after", "reduced", "stop",
                "plateau_wait", "stopping_wait"} <= set(row)


@pytest.mark.slow
@pytest.mark.quick
def test_the_run_exercised_both_callbacks(uneven_run):
    """Guards the tests below against vacuity: an LR reduction and an early stop happened."""
    _, result, _ = uneven_run
    assert result.summary["lr_reductions"], "no LR reduction: the deciding parameters need retuning"
    assert result.summary["stopped_early"], "no early stop: the deciding parameters need retuning"


@pytest.mark.slow
@pytest.mark.quick
def test_progress_events_and_words_of_a_real_run(uneven_run):
    """Epoch lines carry elapsed time and an ETA; TensorBoard holds every epoch's global metrics and
    decisions; `plateau show`'s words find every recorded decision; the index calls it finished."""
    from service import runs
    from service.explain import explain
    from tests.support.runs import read_events

    spec, result, lines = uneven_run
    history, decisions = result.history, result.decisions
    assert "starting Ray and 2 worker(s) ..." in lines[:3], lines[:3]
    epoch_lines = [ln for ln in lines if ln.startswith("epoch ")]
    assert len(epoch_lines) == len(history)
    assert all(re.search(r"  \d+\.\ds  elapsed \S+  eta \S+", ln) for ln in epoch_lines[:-1]), epoch_lines
    stopped = r"  \d+\.\ds  elapsed \S+  early stop: no improvement for early_stopping.patience epochs$"
    assert re.search(stopped, epoch_lines[-1]), epoch_lines[-1]

    got = read_events(result.out_dir / "tensorboard")
    rank0 = [d for d in decisions if d["rank"] == 0]
    assert got["val_loss"] == [(h["epoch"], round(h["val_loss"], 6)) for h in history]
    assert got["lr"] == [(h["epoch"], round(h["lr"], 6)) for h in history]
    assert got["decisions/lr_reduced"] == [(d["epoch"], float(d["reduced"])) for d in rank0]
    assert got["decisions/stop"][-1] == (history[-1]["epoch"], 1.0)
    assert got["test/accuracy"] == [(history[-1]["epoch"], round(result.summary["test_accuracy"], 6))]

    words = explain(spec, decisions)
    assert len(words) == len(history) and not [w for w in words if "the trace says" in w]
    reduced = [r["epoch"] for r in result.summary["lr_reductions"]]
    assert [int(w.split(":")[0].split()[1]) for w in words if " -> " in w] == reduced
    assert words[-1].endswith(": stop")
    shown = runs.show(result.out_dir)
    assert shown.startswith(f"uneven: train run, finished (patience at epoch {history[-1]['epoch']})\n")
    assert shown.endswith("\n".join(words) + "\n")


@pytest.mark.slow
@pytest.mark.quick
def test_g1_every_rank_sees_the_exact_global_validation_metric(uneven_run):
    spec, result, _ = uneven_run
    splits = data_lib.load(spec.data.source, "holdout")
    assert [len(range(len(splits.x_val))[data_lib.shard(len(splits.x_val), 2, r)]) for r in (0, 1)] == [501, 500]
    kept = checkpoints(spec)
    assert sorted(kept) == [r["epoch"] for r in result.history]
    for epoch, rows in by_epoch(result.decisions).items():
        model = model_at(spec, kept[epoch])
        loss, accuracy = exact_metrics(model, splits.x_val, splits.y_val)
        # A mean of the two shards' means differs from the global mean on these shards.
        shard_means = [exact_metrics(model, splits.x_val[s], splits.y_val[s])[1]
                       for s in (data_lib.shard(1001, 2, 0), data_lib.shard(1001, 2, 1))]
        for row in rows:
            assert row["values"]["val_accuracy"] == accuracy  # counts: exact
            assert row["values"]["val_loss"] == pytest.approx(loss, rel=1e-6)  # float32 sums
            if np.mean(shard_means) != accuracy:
                assert row["values"]["val_accuracy"] != np.mean(shard_means)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
def test_g1_three_workers_see_the_exact_metric_of_1999_validation_images(engine, tmp_path, module_ray):
    """667 + 666 + 666 validation images, and the global batch of 200 as 67 + 67 + 66 rows."""
    sample = data_lib.load("sample", "test")
    source = tmp_path / "n1999.npz"
    np.savez(source, x_train=sample.x_train[:3000].reshape(-1, 28, 28), y_train=sample.y_train[:3000],
             x_test=sample.x_test[:1999].reshape(-1, 28, 28), y_test=sample.y_test[:1999])
    spec = make_spec(tmp_path, f"data.source={source}", "data.validation=test", "training.epochs=2",
                     "training.batch_size=200", "scaling.num_workers=3", "checkpoint.keep=null",
                     f"training.engine={engine}", name="three")
    result = train.run(spec, echo=lambda line: None)
    assert result.ok, result.error
    splits = data_lib.load(str(source), "test")
    kept = checkpoints(spec)
    for epoch, rows in by_epoch(result.decisions).items():
        assert sorted(r["rank"] for r in rows) == [0, 1, 2]
        loss, accuracy = exact_metrics(model_at(spec, kept[epoch]), splits.x_val, splits.y_val)
        for row in rows:
            assert row["values"]["val_accuracy"] == accuracy
            assert row["values"]["val_loss"] == pytest.approx(loss, rel=1e-6)


@pytest.mark.slow
@pytest.mark.quick
def test_g2_ranks_apply_the_same_lr_and_stop_together(uneven_run):
    _, result, _ = uneven_run
    epochs = by_epoch(result.decisions)
    assert sorted(epochs) == [r["epoch"] for r in result.history]
    for epoch, rows in epochs.items():
        assert sorted(r["rank"] for r in rows) == [0, 1]
        first = {k: v for k, v in rows[0].items() if k != "rank"}
        for row in rows[1:]:
            assert {k: v for k, v in row.items() if k != "rank"} == first
    lr_per_rank = {rank: [r["lr_after"] for r in result.decisions if r["rank"] == rank] for rank in (0, 1)}
    assert lr_per_rank[0] == lr_per_rank[1]
    stops = [r["epoch"] for r in result.decisions if r["stop"]]
    assert stops == [result.history[-1]["epoch"]] * 2
    assert [r["lr"] for r in result.history] == [r["lr_before"] for r in result.decisions if r["rank"] == 0]
    assert result.summary["ranks_agree"] is True
    assert result.summary["replicas_identical"] is True  # G5's clean verdict, on every rank at every epoch


@pytest.mark.slow
@pytest.mark.quick
def test_g3_decisions_equal_stock_keras_replayed_on_the_global_metrics(uneven_run, uneven_replay):
    spec, result, _ = uneven_run
    rank0 = [r for r in result.decisions if r["rank"] == 0]
    lrs, stop_epoch, _ = uneven_replay
    assert [r["lr_after"] for r in rank0] == lrs
    assert result.summary["stop_epoch"] == stop_epoch
    assert result.summary["lr_reductions"] == [
        {"epoch": r["epoch"], "lr": r["lr_after"]} for r in rank0 if r["reduced"]]


@pytest.mark.slow
@pytest.mark.quick
def test_g3_restored_weights_are_the_global_best_epochs_on_every_rank(uneven_run, uneven_replay):
    """The test metric is a sum over both ranks' shards of the final weights: it equals the
    best epoch's checkpoint on the whole test set only if both ranks restored that epoch."""
    spec, result, _ = uneven_run
    _, stop_epoch, best_epoch = uneven_replay
    splits = data_lib.load(spec.data.source, "holdout")
    model = model_at(spec, checkpoints(spec)[best_epoch])
    test_loss, test_accuracy = exact_metrics(model, splits.x_test, splits.y_test)
    assert result.summary["test_accuracy"] == test_accuracy
    assert result.summary["test_loss"] == pytest.approx(test_loss, rel=1e-6)
    assert best_epoch != stop_epoch  # otherwise restoring would prove nothing


@pytest.mark.slow
@pytest.mark.quick
def test_the_model_file_loads_in_a_fresh_process_and_scores_the_summarys_test_accuracy(uneven_run):
    """model.keras is stock layers of the engine's Keras (tf_keras 2.21, or Keras 3 for keras_jax)."""
    spec, result, _ = uneven_run
    scored = score_model_file(spec.training.engine, result.out_dir / "model.keras", spec.data.source)
    assert scored["layers"] == ["Dense", "Dropout", "Dense"]
    assert scored["keras"].startswith("2." if spec.training.engine == "tf_keras" else "3.")
    assert scored["accuracy"] == result.summary["test_accuracy"]


@pytest.mark.heavy  # a run of its own; consensus itself is unit-tested in test_deciding.py by default
@pytest.mark.parametrize("engine", ENGINES)
def test_g4_consensus_holds_even_when_ranks_see_different_metrics(tmp_path, engine, module_ray):
    """Rank-local metrics (the naive setup): views differ, yet LR and stop stay common."""
    spec = make_spec(tmp_path, "debug.rank_local_metrics=true", "training.epochs=6", f"training.engine={engine}",
                     "reduce_lr={monitor: val_accuracy, factor: 0.5, patience: 0, min_delta: 0.004}",
                     "early_stopping={monitor: val_accuracy, patience: 1, min_delta: 0.004}", name="local")
    result = train.run(spec, echo=lambda line: None)
    assert result.ok, result.error
    epochs = by_epoch(result.decisions)
    assert all(len(rows) == 2 for rows in epochs.values())  # both ranks reported every epoch
    assert any(rows[0]["values"]["val_accuracy"] != rows[1]["values"]["val_accuracy"] for rows in epochs.values())
    for rows in epochs.values():
        assert rows[0]["lr_after"] == rows[1]["lr_after"]
        assert rows[0]["stop"] == rows[1]["stop"]
    assert result.summary["ranks_agree"] is False  # the trace shows the views differed


@pytest.mark.slow
def test_local_mode_trains_in_process(tmp_path):
    spec = make_spec(tmp_path, "scaling.num_workers=0", "training.epochs=2", name="inproc")
    result = train.run(spec, echo=lambda line: None)
    assert result.ok, result.error
    assert [r["epoch"] for r in result.history] == [1, 2]
    assert {d["rank"] for d in result.decisions} == {0}
    assert result.summary["workers"] == 1
    assert 0.5 < result.summary["test_accuracy"] <= 1.0


def test_spec_typo_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "typo.yaml").write_text("reduce_lr:\n  patiance: 2\n")
    done = plateau("train", "typo.yaml", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "plateau: typo.yaml: reduce_lr.patiance: unknown field; did you mean 'patience'?"]
    assert not (tmp_path / "results").exists()


def test_corrupt_npz_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 not really a zip")
    done = plateau("train", "--data", "broken.npz", "--epochs", "1", cwd=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("plateau: ") and "broken.npz" in lines[0]
    assert not (tmp_path / "results").exists()


def test_unreachable_or_wrong_address_is_one_line_and_exit_2(tmp_path):
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for address, expected in ((f"127.0.0.1:{port}", "nothing answers there"),
                              ("http://127.0.0.1:8265", "is the job server")):
        done = plateau("train", "--address", address, "--data", "sample", cwd=tmp_path)
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], lines
    assert not (tmp_path / "results").exists()
