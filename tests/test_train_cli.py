"""`plateau train` end to end, as a user types it, on real Ray with two real
TensorFlow workers and the bundled MNIST sample.

One clean run that stops early (module-scoped) backs provenance, the stop reason, the replica
check's clean verdict, the exported model, the file modes and run identity; a run with a learning
rate that really diverges backs the non-finite stop; a run with one rank's weight nudged by one
ulp backs the replica check firing. Signals are in test_failures.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import datetime
from importlib import metadata

import pytest

from service.report import files as run_files
from service.report.summary import non_finite_metrics
from service.lint import SEED_ADVICE
from tests.support.engines import ENGINES, NEEDS_JAX
from tests.support.limits import COMMAND_S, LONG_RUN_S, PROGRAM_S
from tests.support.project import PROJECT_ROOT
from tests.support.project import plateau as run_plateau
from tests.support.runs import score_model_file

pytestmark = pytest.mark.slow

SPEC = "jobs/seed-reduce-lr.yaml"
# The quickstart's run (val_accuracy 0.9105, 0.9195, 0.9305, 0.9340, 0.9365, 0.9340, ...) with
# EarlyStopping's patience cut to 1 and best-weight restore: it stops at epoch 6 of 8 on patience
# and restores epoch 5 (whose weights the 5-epoch quickstart ends with: test accuracy 0.9365).
EARLY = ("--data", "sample", "--epochs", "8", "--set", "early_stopping.patience=1",
         "--set", "early_stopping.restore_best_weights=true")
STRICT = dict(parse_constant=lambda c: pytest.fail(f"summary.json holds the non-JSON constant {c}"))
# Adam moves every weight by about the learning rate per step: at 1e16 the seed model's training
# loss overflows float32 to inf within its first epoch on the sample (tried: 1e3 ... 1e15 give
# huge but finite losses for 2 epochs; 1e16 and 3e16 give inf at epoch 1, 1e17 and up NaN).
DIVERGING_LR = "1e16"


def plateau(*args: str, umask: int | None = None, timeout: float = LONG_RUN_S) -> subprocess.CompletedProcess:
    return run_plateau(*args, umask=umask, timeout=timeout)


@pytest.fixture(scope="module")
def early(tmp_path_factory):
    out = tmp_path_factory.mktemp("early")
    args = ("train", SPEC, *EARLY, "--output", str(out), "--name", "early")
    done = plateau(*args, umask=0o027)
    assert done.returncode == 0, done.stdout + done.stderr
    return args, done, out / "early"


def test_the_epoch_line_and_done_line_say_why_the_run_stopped(early):
    _, done, folder = early
    lines = done.stdout.splitlines()
    assert [ln.split()[1] for ln in lines if ln.startswith("epoch ")] == ["1/8", "2/8", "3/8", "4/8", "5/8", "6/8"]
    assert lines[-2].endswith("  lr -> 0.001  early stop: no improvement for early_stopping.patience epochs")
    assert lines[-1] == (f"done: 6 epochs (early stop: no improvement for early_stopping.patience epochs at epoch 6), "
                         f"test accuracy 0.9365, lr reductions at [6] -> {folder}")
    # stderr: the lint's one warning (patience 1 is not larger than ReduceLROnPlateau's 1), nothing else
    assert done.stderr.splitlines() == [
        "warning: early_stopping.patience 1 is not larger than reduce_lr.patience 1 + reduce_lr.cooldown 0 on "
        f"val_accuracy: EarlyStopping stops before a lowered rate can help (the seed: \"{SEED_ADVICE}\")"]


def test_summary_says_when_with_what_from_where_and_why(early):
    args, _, folder = early
    summary = json.loads((folder / "summary.json").read_text(), **STRICT)
    assert (summary["stop_reason"], summary["stop_epoch"], summary["best_epoch"]) == ("patience", 6, 5)
    assert summary["replicas_identical"] is True
    started, finished = (datetime.strptime(summary[k], "%Y-%m-%dT%H:%M:%SZ") for k in ("started_at", "finished_at"))
    assert 0 <= (finished - started).total_seconds() <= summary["wall_seconds"] + 1
    assert summary["versions"] == {"plateau": metadata.version("plateau"), "ray": metadata.version("ray"),
                                   "tensorflow": metadata.version("tensorflow"),
                                   "tf_keras": metadata.version("tf-keras"),
                                   "python": ".".join(map(str, sys.version_info[:3]))}
    git = ["git", "-C", str(PROJECT_ROOT)]
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run([*git, "status", "--porcelain"], capture_output=True, text=True).stdout.strip()
    assert summary["git_commit"] == head + ("-dirty" if dirty else "")
    assert summary["command"] == "plateau " + " ".join(args)
    decisions = run_files.read_decisions(folder / "decisions.jsonl")
    assert [(d["epoch"], d["rank"], d["stop_reason"]) for d in decisions if d["stop_reason"]] == [
        (6, 0, "patience"), (6, 1, "patience")]
    assert [d["replicas_identical"] for d in decisions] == [True] * 12


def test_output_files_follow_the_umask(early):
    _, _, folder = early
    files = ["curves.png", "decisions.jsonl", "history.csv", "model.keras", "ray.log", "spec.yaml", "status.json",
             "summary.json"]
    assert sorted(p.name for p in folder.iterdir() if p.is_file()) == files
    events = [p.relative_to(folder) for p in (folder / "tensorboard").iterdir()]
    assert len(events) == 1  # TensorBoard's event file, written by the driver
    files += events
    assert {name: oct((folder / name).stat().st_mode & 0o777) for name in files} == {name: "0o640" for name in files}


def test_the_exported_model_loads_in_plain_tf_keras_and_scores_the_summarys_test_accuracy(early):
    _, _, folder = early
    loaded = score_model_file("tf_keras", folder / "model.keras", "sample")  # tf_keras as installed
    assert loaded["layers"] == ["Dense", "Dropout", "Dense"]  # stock layers: no custom objects needed
    summary = json.loads((folder / "summary.json").read_text())
    assert loaded["accuracy"] == pytest.approx(summary["test_accuracy"], abs=1e-6)
    assert summary["test_accuracy"] == 0.9365  # epoch 5's weights, restored by EarlyStopping


def test_a_name_is_the_same_run_only_with_the_same_spec(early):
    args, _, folder = early
    again = plateau(*args, timeout=PROGRAM_S)
    assert (again.returncode, again.stderr.count("plateau:")) == (0, 0)
    assert again.stdout.splitlines()[-1] == (f"early already finished: see {folder}/summary.json "
                                             "(use --fresh to train it again)")
    changed = plateau(*args, "--epochs", "30", "--set", "reduce_lr.factor=0.5", timeout=PROGRAM_S)
    assert (changed.returncode, changed.stdout) == (2, "")
    assert changed.stderr.splitlines()[-1] == (
        f"plateau: {folder} holds a run of another spec (training.epochs 8 -> 30, reduce_lr.factor 0.1 -> 0.5); "
        "use --fresh to discard it, or --name to train this spec under another name")
    check = plateau("check", *args[1:], timeout=COMMAND_S)
    assert check.returncode == 0 and check.stdout.splitlines()[-1] == (
        f"# {folder}: finished; train says so and hands back its result (--fresh trains it again)")


@pytest.mark.parametrize("engine, rate, words, non_finite", [
    ("tf_keras", DIVERGING_LR, "inf", ["loss"]),
    # Keras 3 on JAX stays finite at 1e16 (a clipped cross-entropy of about 14 for 4 epochs); at
    # 1e30 the weights overflow in epoch 1 and the model's outputs are NaN, on validation too.
    pytest.param("keras_jax", "1e30", "nan", ["loss", "val_loss"], marks=NEEDS_JAX)])
def test_a_diverging_run_stops_every_rank_at_the_non_finite_epoch(tmp_path, engine, rate, words, non_finite):
    args = ("train", SPEC, "--data", "sample", "--epochs", "4", "--output", str(tmp_path), "--name", "boom",
            "--set", f"model.learning_rate={rate}", "--set", f"training.engine={engine}",
            "--set", "early_stopping={monitor: val_accuracy, patience: 3, restore_best_weights: true}")
    done = plateau(*args)
    assert done.returncode == 1, done.stdout + done.stderr
    folder = tmp_path / "boom"
    history = run_files.read_history(folder / "history.csv")
    assert [r["epoch"] for r in history] == [1] and non_finite_metrics(history[0]) == non_finite
    epoch, value = 1, history[0]["loss"]
    assert str(value) == words  # the training loss overflowed float32 in the first epoch
    assert done.stderr.splitlines()[-1] == (
        f"plateau: training diverged at epoch 1 (stopped: loss is {words}): every rank stopped there; "
        f"lower model.learning_rate and train again with --fresh (the run is in {folder})")
    assert done.stdout.splitlines()[-1].startswith(f"epoch 1/4  loss {words}  ")
    assert done.stdout.splitlines()[-1].endswith(f"  stopped: loss is {words}")
    summary = json.loads((folder / "summary.json").read_text(), **STRICT)
    assert (summary["stop_reason"], summary["stop_epoch"], summary["epochs_run"]) == ("non_finite", epoch, epoch)
    decisions = run_files.read_decisions(folder / "decisions.jsonl")
    assert [(d["rank"], d["stop"], d["stop_reason"]) for d in decisions if d["epoch"] == epoch] == [
        (0, True, "non_finite"), (1, True, "non_finite")]
    assert (folder / "curves.png").read_bytes()[:4] == b"\x89PNG" and (folder / "model.keras").is_file()
    # Not trusted as finished: the same command says what happened, again with exit 1.
    again = plateau(*args, timeout=PROGRAM_S)
    assert again.returncode == 1 and again.stderr.splitlines()[-1] == done.stderr.splitlines()[-1]


@pytest.mark.parametrize("engine", ENGINES)
def test_the_replica_check_fails_the_run_at_the_epoch_one_rank_drifted(tmp_path, engine):
    done = plateau("train", SPEC, "--data", "sample", "--epochs", "3", "--output", str(tmp_path), "--name", "drift",
                   "--set", "debug.perturb_at_epoch=2", "--set", "debug.perturb_rank=1",
                   "--set", f"training.engine={engine}")
    assert done.returncode == 1, done.stdout + done.stderr
    folder = tmp_path / "drift"
    line = done.stderr.splitlines()[-1]
    assert re.fullmatch(
        r"plateau: replicas differ after epoch 2: rank 1's model/2\.dense/bias is not rank 0's "
        r"\(1 of 14 variables differ\); the checkpoint of epoch 1 is in .*/drift/checkpoints/drift: "
        r"run the same command again to resume", line), line
    assert [r["epoch"] for r in run_files.read_history(folder / "history.csv")] == [1]
    assert [d["replicas_identical"] for d in run_files.read_decisions(folder / "decisions.jsonl")] == [True, True]
    assert not (folder / "summary.json").exists()
