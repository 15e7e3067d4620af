"""MLflow tracking (service/tracking.py), with real MLflow stores: a folder, SQLite and a real
`mlflow server` over HTTP, read back with MlflowClient; the Ray tests train on the sample."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from service import data as data_lib
from service import train
from service.report import files as run_files
from service.cli import load_with_tracking
from service.grid import expand_settings
from service.spec import SpecError, dump_spec
from tests.support.engines import NEEDS_JAX
from tests.support.limits import COMMAND_S, LONG_RUN_S, PROGRAM_S
from tests.support.project import plateau
from tests.support.runs import make_spec

mlflow = pytest.importorskip("mlflow")
from mlflow import MlflowClient  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parent.parent
EPOCH_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy", "lr", "workers")
# Both callbacks act within 3 epochs on the sample: a reduction and an early stop to log.
ACTING = ("reduce_lr={monitor: val_accuracy, factor: 0.5, patience: 0, min_delta: 1.0}",
          "early_stopping={monitor: val_accuracy, patience: 1, min_delta: 1.0}")


def _env(tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
    env.update(PYTHONUNBUFFERED="1", RAY_USAGE_STATS_ENABLED="0", MLFLOW_ALLOW_FILE_STORE="true",
               PYTHONPATH=os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")])))
    return env


def _client(uri: str) -> MlflowClient:
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks for it to read a folder store
    return MlflowClient(tracking_uri=uri)


def _run_id(out: Path) -> str:
    return json.loads((out / "mlflow.json").read_text())["run_id"]


def _assert_epochs_equal_history(client: MlflowClient, run_id: str, out: Path) -> None:
    history = run_files.read_history(out / "history.csv")
    for key in EPOCH_METRICS:
        logged = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        assert logged == [(r["epoch"], float(r[key])) for r in history], key


# ---------------------------------------------------------------------------------------------
# Without Ray


def test_a_bad_tracking_uri_is_one_line_and_exit_2_before_anything_starts(tmp_path: Path):
    done = plateau("check", str(PROJECT_ROOT / "jobs" / "seed-reduce-lr.yaml"), "--mlflow", "ftp://host/x",
                   cwd=tmp_path)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [
        f"plateau: {PROJECT_ROOT / 'jobs' / 'seed-reduce-lr.yaml'}: tracking.mlflow: MLflow has no tracking store "
        "for ftp://; use a folder (./mlruns), sqlite:///mlflow.db or http://HOST:5000 (got 'ftp://host/x')"]


def test_the_uri_comes_from_the_flag_then_the_spec_then_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    spec_file = tmp_path / "s.yaml"
    spec_file.write_text("tracking: {mlflow: sqlite:///spec.db, experiment: e}\n")
    bare = tmp_path / "bare.yaml"
    bare.write_text("name: bare\n")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")

    class Args:
        data = workers = epochs = gpu = output = name = None
        overrides: list = []

    def uri(path: Path, flag: str | None = None):
        args = Args()
        args.spec, args.mlflow = str(path), flag
        spec = load_with_tracking(args)
        return spec.tracking and (spec.tracking.mlflow, spec.tracking.experiment)

    assert uri(spec_file, "./mlruns") == ("./mlruns", "e")
    assert uri(spec_file) == ("sqlite:///spec.db", "e")
    assert uri(bare) == ("http://127.0.0.1:5999", "plateau")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "nope:x")
    with pytest.raises(SpecError, match=r"^MLFLOW_TRACKING_URI: not a tracking URI"):
        uri(bare)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert uri(bare) is None


def test_a_base_specs_tracking_moves_to_the_study_and_not_into_its_trials():
    from service.grid import expand
    from service.spec import load_spec

    spec = load_spec(PROJECT_ROOT / "jobs" / "seed-comparison.yaml",
                     ["base.tracking={experiment: studies}", "tracking.mlflow=sqlite:///s.db"])
    assert (spec.tracking.mlflow, spec.tracking.experiment, spec.base.tracking) == ("sqlite:///s.db", "studies", None)
    assert {t.spec.tracking for t in expand(spec)} == {None}


def test_a_studys_parent_run_logs_the_plan_file_the_study_writes():
    from service import tracking
    from service.compare.plan import PLAN_FILE

    assert PLAN_FILE in tracking.STUDY_FILES


# ---------------------------------------------------------------------------------------------
# A train run


@pytest.mark.slow
@pytest.mark.parametrize("store, engine", [("folder", "tf_keras"), ("sqlite", "tf_keras"),
                                           pytest.param("sqlite", "keras_jax", marks=NEEDS_JAX)])
def test_a_train_run_lands_in_mlflow(tmp_path: Path, store: str, engine: str, monkeypatch: pytest.MonkeyPatch):
    """Also a keras_jax run: its Keras 3 model.keras is logged with Keras 3's requirements and loads back."""
    monkeypatch.chdir(tmp_path)  # a database store keeps its artifacts in ./mlruns, MLflow's default
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = str(tmp_path / "mlruns") if store == "folder" else f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = make_spec(tmp_path, *ACTING, f"tracking={{mlflow: '{uri}', experiment: tests}}",
                     "scaling.num_workers=1", f"training.engine={engine}", name="tracked")
    lines: list[str] = []
    result = train.run(spec, echo=lines.append)
    assert result.ok, result.error
    # Not left behind for the next command of this process, or the processes it starts.
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert not [ln for ln in lines if ln.startswith("warning:")], lines
    out = result.out_dir
    client = _client(uri)
    run = client.get_run(_run_id(out))
    assert run.info.status == "FINISHED" and run.info.run_name == "tracked"
    assert client.get_experiment(run.info.experiment_id).name == "tests"
    params = run.data.params
    assert (params["training.epochs"], params["reduce_lr.factor"], params["data.source"]) == ("3", "0.5", "sample")
    assert params["early_stopping.monitor"] == "val_accuracy" and params["checkpoint.keep"] == "2"
    _assert_epochs_equal_history(client, run.info.run_id, out)
    summary = result.summary
    assert summary["stop_reason"] == "patience" and summary["lr_reductions"]
    tags = run.data.tags
    assert (tags["stop_reason"], tags["decisions.stop_reason"]) == ("patience", "patience")
    assert tags["decisions.stop_epoch"] == str(summary["stop_epoch"])
    first = summary["lr_reductions"][0]
    assert tags[f"decisions.lr_reduced.epoch_{first['epoch']}"] == f"0.01 -> {first['lr']}"
    assert tags["replicas_identical"] == "null" and tags["versions.tf_keras"] == summary["versions"]["tf_keras"]
    assert run.data.metrics["test_accuracy"] == summary["test_accuracy"]
    assert run.data.metrics["best_epoch"] == summary["best_epoch"]
    assert run.data.metrics["stop_epoch"] == summary["stop_epoch"]
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {
        "history.csv", "decisions.jsonl", "summary.json", "curves.png", "spec.yaml"}
    logged_summary = json.loads(Path(client.download_artifacts(run.info.run_id, "summary.json", str(tmp_path))
                                     ).read_text())
    assert logged_summary == json.loads((out / "summary.json").read_text())
    # The model MLflow loads back scores the summary's test accuracy on the test set.
    mlflow.set_tracking_uri(uri)
    try:
        model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    finally:
        mlflow.set_tracking_uri(None)  # it exports MLFLOW_TRACKING_URI: later tests would be tracked
    splits = data_lib.load("sample", "holdout")
    probabilities = model.predict(splits.x_test.astype("float32") / 255.0)
    assert float((np.argmax(probabilities, axis=1) == splits.y_test).mean()) == summary["test_accuracy"]


# ---------------------------------------------------------------------------------------------
# A study


@pytest.mark.slow
def test_a_study_is_a_parent_run_with_a_nested_run_per_trial(tmp_path: Path):
    spec = tmp_path / "study.yaml"
    spec.write_text("kind: compare\nname: mstudy\n"
                    f"base: {PROJECT_ROOT / 'jobs' / 'seed-reduce-lr.yaml'}\n"
                    "grid:\n  model.learning_rate: [0.01, 0.05]\nseeds: [7, 8]\n")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    argv = [sys.executable, "-m", "service.cli", "compare", str(spec), "--data", "sample", "--workers", "1",
            "--epochs", "1", "--output", str(tmp_path / "out"), "--mlflow", uri]
    done = subprocess.run(argv, cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=LONG_RUN_S)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "warning: MLflow" not in done.stderr
    root = tmp_path / "out" / "mstudy"
    client = _client(uri)
    ids = json.loads((root / "mlflow.json").read_text())
    parent = client.get_run(ids["run_id"])
    assert parent.info.status == "FINISHED" and parent.info.run_name == "mstudy"
    assert parent.data.params["grid.model.learning_rate"] == "[0.01, 0.05]"
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    rows = {r["trial"]: r for r in csv.DictReader((root / "comparison.csv").open())}
    assert sorted(c.info.run_name for c in children) == sorted(rows) and len(rows) == 4
    assert sorted(ids["trials"].values()) == sorted(c.info.run_id for c in children)
    for child in children:
        row = rows[child.info.run_name]
        assert child.info.status == "FINISHED"
        assert (child.data.params["seed"], child.data.params["grid.model.learning_rate"]) == \
            (row["seed"], row["model.learning_rate"])
        assert child.data.params["training.seed"] == row["seed"]
        assert child.data.metrics["test_accuracy"] == float(row["test_accuracy"])
        _assert_epochs_equal_history(client, child.info.run_id, root / "trials" / child.info.run_name)
    settings = list(csv.DictReader((root / "settings.csv").open()))
    base, other = (s.slug for s in expand_settings({"model.learning_rate": [0.01, 0.05]}))
    assert parent.data.metrics[f"{other}/diff_mean"] == float(settings[1]["diff_mean"])
    assert parent.data.metrics[f"{other}/p_value"] == float(settings[1]["p_value"])
    assert parent.data.metrics[f"{other}/n_seeds"] == 2.0
    assert parent.data.metrics[f"{base}/test_accuracy_mean"] == float(settings[0]["test_accuracy_mean"])
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {
        "comparison.csv", "settings.csv", "comparison.md", "comparison.png"}


# ---------------------------------------------------------------------------------------------
# A tracking server, and a run that outlives it


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(tmp_path: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server-artifacts"), "--workers", "1"],
        cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2):
                return server, uri
        except OSError:
            time.sleep(0.5)
    _stop(server)
    pytest.fail("mlflow server did not answer within 120 s")


def _stop(server: subprocess.Popen) -> None:
    """The server and the workers it started: its process group, by its pid."""
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGKILL)
    server.wait(timeout=30)


@pytest.mark.slow
def test_a_run_logs_over_http_and_outlives_the_server(tmp_path: Path):
    server, uri = _start_server(tmp_path)
    try:
        spec = make_spec(tmp_path, "scaling.num_workers=1", "debug.epoch_pause_s=3", name="served")
        (tmp_path / "served.yaml").write_text(dump_spec(spec))
        driver = subprocess.Popen([sys.executable, "-m", "service.cli", "train", "served.yaml", "--mlflow", uri],
                                  cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)
        for line in driver.stdout:
            if line.startswith("epoch 1/"):
                break
        out = tmp_path / "results" / "served"
        run_id = _run_id(out)
        live = MlflowClient(tracking_uri=uri)
        assert [(m.step, m.value) for m in live.get_metric_history(run_id, "val_accuracy")] == [
            (1, run_files.read_history(out / "history.csv")[0]["val_accuracy"])]
        _stop(server)  # mid-run: epochs 2 and 3 are still to come
        rest, stderr = driver.communicate(timeout=PROGRAM_S)
    finally:
        _stop(server)
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 0, rest + stderr
    warnings = [ln for ln in stderr.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and warnings[0].startswith(f"warning: MLflow tracking at {uri} failed ("), stderr
    assert "Traceback" not in stderr
    assert [r["epoch"] for r in run_files.read_history(out / "history.csv")] == [1, 2, 3]
    assert json.loads((out / "summary.json").read_text())["stop_reason"] == "max_epochs"
    assert "done: 3 epochs" in rest


# ---------------------------------------------------------------------------------------------
# Resuming


@pytest.mark.slow
def test_a_resumed_run_continues_its_mlflow_run_without_duplicate_steps(tmp_path: Path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = make_spec(tmp_path, "training.epochs=5", "scaling.num_workers=1", "debug.epoch_pause_s=1",
                     f"tracking={{mlflow: '{uri}'}}", name="again")
    (tmp_path / "again.yaml").write_text(dump_spec(spec))
    command = [sys.executable, "-m", "service.cli", "train", "again.yaml"]
    driver = subprocess.Popen(command, cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
    for line in driver.stdout:
        if line.startswith("epoch 2/"):
            break
    os.killpg(driver.pid, signal.SIGINT)  # Ctrl-C
    driver.communicate(timeout=COMMAND_S)
    assert driver.returncode == 130
    out = tmp_path / "results" / "again"
    run_id = _run_id(out)
    client = _client(uri)
    assert client.get_run(run_id).info.status == "KILLED"
    again = subprocess.run(command, cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=LONG_RUN_S)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "resuming after epoch" in again.stdout
    assert _run_id(out) == run_id
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    _assert_epochs_equal_history(client, run_id, out)  # every epoch once: no step twice
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [1, 2, 3, 4, 5]
    assert len(client.search_runs([run.info.experiment_id])) == 1
