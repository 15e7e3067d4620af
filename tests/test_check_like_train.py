"""`plateau check` refuses what `plateau train` (and `compare`) refuse before anything starts:
the same inputs, exit 2 from both, the same `plateau: ...` line. The inputs are the bad-input
cases the train, data, run-rules and compare tests hold `train` and `compare` to. `train` runs as
the user runs it (a process, which exits before Ray starts); `check` runs in this process, so
none of these tests starts Ray.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from service import cli, runlock
from service.spec import dump_spec, load_spec

ROOT = Path(__file__).resolve().parent.parent
SPEC = str(ROOT / "jobs" / "seed-reduce-lr.yaml")


def _free_port() -> int:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _arrays(n_train: int = 60, n_test: int = 12) -> dict:
    rng = np.random.default_rng(0)
    return {"x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
            "y_train": rng.integers(0, 10, n_train, dtype=np.uint8),
            "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
            "y_test": rng.integers(0, 10, n_test, dtype=np.uint8)}


def _npz(folder: Path, name: str, **changes) -> str:
    arrays = {**_arrays(), **changes}
    np.savez_compressed(folder / name, **{k: v for k, v in arrays.items() if v is not None})
    return name


def _case(name: str, folder: Path) -> tuple[list[str], dict]:
    """(the arguments after the subcommand, extra environment) of one bad input, made in `folder`."""
    if name == "spec typo":
        (folder / "typo.yaml").write_text("reduce_lr:\n  patiance: 2\n")
        return ["typo.yaml"], {}
    if name == "corrupt npz":
        (folder / "broken.npz").write_bytes(b"PK\x03\x04 not really a zip")
        return [SPEC, "--data", "broken.npz"], {}
    if name == "missing npz":
        return [SPEC, "--data", "nope.npz"], {}
    if name == "not a path":
        return [SPEC, "--data", "fashion"], {}
    if name == "npz without y_test":
        return [SPEC, "--data", _npz(folder, "keys.npz", y_test=None)], {}
    if name == "one-hot labels":
        return [SPEC, "--data", _npz(folder, "onehot.npz", y_train=np.eye(10, dtype=np.uint8)[_arrays()["y_train"]])], {}
    if name == "label 10":
        return [SPEC, "--data", _npz(folder, "ten.npz", y_test=np.full(12, 10, np.uint8))], {}
    if name == "scaled pixels":
        return [SPEC, "--data", _npz(folder, "scaled.npz", x_train=_arrays()["x_train"] / 255.0)], {}
    if name == "too few for a holdout":
        return [SPEC, "--data", _npz(folder, "tiny.npz", **_arrays(n_train=5)),
                "--set", "data.validation=holdout"], {}
    if name == "a batch larger than the data":
        return [SPEC, "--data", "sample", "--set", "training.batch_size=20000"], {}
    if name == "parquet without test":
        (folder / "pq" / "train").mkdir(parents=True)
        return [SPEC, "--data", "pq"], {}
    if name == "nothing answers at the address":
        return [SPEC, "--data", "sample", "--address", f"127.0.0.1:{_free_port()}"], {}
    if name == "a job server address":
        return [SPEC, "--data", "sample", "--address", "http://127.0.0.1:8265"], {}
    if name == "RAY_ADDRESS a job server":
        return [SPEC, "--data", "sample"], {"RAY_ADDRESS": "http://127.0.0.1:8265"}
    if name == "output under a file":
        (folder / "a-file").write_text("not a folder")
        return [SPEC, "--data", "sample", "--output", str(folder / "a-file" / "results")], {}
    if name == "a fraction of a GPU":
        return [SPEC, "--data", "sample", "--gpu", "--set", "scaling.gpus_per_worker=0.5"], {}
    if name == "a folder holding another spec":
        earlier = load_spec(SPEC, ["data.source=sample", "training.epochs=3", f"output={folder / 'results'}"])
        out = folder / "results" / earlier.name
        out.mkdir(parents=True)
        (out / "spec.yaml").write_text(dump_spec(earlier))
        (out / "history.csv").write_text("epoch,loss\n1,0.5\n")
        return [SPEC, "--data", "sample", "--epochs", "5"], {}
    raise AssertionError(name)


TRAIN_CASES = ["spec typo", "corrupt npz", "missing npz", "not a path", "npz without y_test", "one-hot labels",
               "label 10", "scaled pixels", "too few for a holdout", "a batch larger than the data",
               "parquet without test", "nothing answers at the address", "a job server address",
               "RAY_ADDRESS a job server", "output under a file", "a fraction of a GPU",
               "a folder holding another spec"]


def _plateau(argv: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    environment["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.run([sys.executable, "-m", "service.cli", *argv], cwd=cwd, env={**environment, **env},
                          capture_output=True, text=True, timeout=120)


def _check(argv: list[str], cwd: Path, env: dict, monkeypatch: pytest.MonkeyPatch,
           capsys: pytest.CaptureFixture) -> tuple[int, str, list[str]]:
    """`plateau check ARGV` in this process: (exit code, stdout, its `plateau:` lines)."""
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)  # main() shortens it
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    code = cli.main(["check", *argv])
    out = capsys.readouterr()
    return code, out.out, [ln for ln in out.err.splitlines() if ln.startswith("plateau:")]


@pytest.mark.parametrize("case", TRAIN_CASES)
def test_check_refuses_what_train_refuses_with_the_same_line(case, tmp_path, monkeypatch, capsys):
    argv, env = _case(case, tmp_path)
    train = _plateau(["train", *argv], tmp_path, env)
    train_lines = [ln for ln in train.stderr.splitlines() if ln.startswith("plateau:")]
    assert train.returncode == 2 and len(train_lines) == 1, (train.returncode, train.stderr)
    code, out, lines = _check(argv, tmp_path, env, monkeypatch, capsys)
    assert (code, out) == (2, "")
    assert lines == train_lines


def test_check_refuses_a_run_folder_in_use_as_train_does(tmp_path, monkeypatch, capsys):
    spec = load_spec(SPEC, ["data.source=sample", f"output={tmp_path / 'results'}"])
    argv = [SPEC, "--data", "sample", "--output", str(tmp_path / "results")]
    with runlock.hold(Path(spec.output) / spec.name, "plateau train (another one)", lambda line: None):
        train = _plateau(["train", *argv], tmp_path, {})
        code, out, lines = _check(argv, tmp_path, {}, monkeypatch, capsys)
    assert train.returncode == 2 and (code, out) == (2, "")
    assert lines == [ln for ln in train.stderr.splitlines() if ln.startswith("plateau:")]
    assert len(lines) == 1 and "is in use by" in lines[0]


@pytest.mark.parametrize("case", ["bad grid", "missing data"])
def test_check_refuses_what_compare_refuses_with_the_same_line(case, tmp_path, monkeypatch, capsys):
    (tmp_path / "c.yaml").write_text(f"kind: compare\nname: s\nbase: {SPEC}\ngrid:\n  reduce_lr.factor: [0.1, 1.5]\n")
    argv = ["c.yaml", "--output", str(tmp_path / "out")]
    if case == "missing data":
        argv += ["--set", "grid={reduce_lr.factor: [0.2, 0.5]}", "--data", "missing.npz"]
    compare = _plateau(["compare", *argv], tmp_path, {})
    compare_lines = [ln for ln in compare.stderr.splitlines() if ln.startswith("plateau:")]
    assert compare.returncode == 2 and len(compare_lines) == 1, compare.stderr
    code, out, lines = _check(argv, tmp_path, {}, monkeypatch, capsys)
    assert (code, out, lines) == (2, "", compare_lines)
    assert not (tmp_path / "out").exists()


def test_check_reads_parquet_as_train_does(tmp_path, monkeypatch, capsys):
    """A good Parquet folder passes; a row of 700 pixels is the line the data layer words."""
    from service import data as data_lib

    arrays = _arrays()
    data_lib.export_parquet(arrays, tmp_path / "good")
    code, out, lines = _check([SPEC, "--data", "good", "--set", "training.batch_size=10"], tmp_path, {},
                              monkeypatch, capsys)
    assert (code, lines) == (0, []) and "source: good" in out
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "bad" / "test").mkdir(parents=True)
    data_lib.export_parquet(arrays, tmp_path / "bad")
    rows = pa.ListArray.from_arrays(pa.array(np.arange(0, 13 * 700, 700, dtype=np.int32)),
                                    pa.array(np.zeros(12 * 700, np.uint8)))
    pq.write_table(pa.table({"image": rows, "label": pa.array(arrays["y_test"])}),
                   tmp_path / "bad" / "test" / "part-00000.parquet")
    code, out, lines = _check([SPEC, "--data", "bad"], tmp_path, {}, monkeypatch, capsys)
    assert (code, out) == (2, "")
    assert lines == ["plateau: bad: test: image row 0 has 700 values; every row needs 784 (28x28)"]


def test_check_takes_every_flag_train_compare_and_submit_take(tmp_path, monkeypatch, capsys):
    """What it cannot check offline it names on one line; the run folder's line stays, with --fresh too."""
    code, out, lines = _check([SPEC, "--data", "sample", "--address", "auto", "--quiet-trials", "--fresh"],
                              tmp_path, {}, monkeypatch, capsys)
    assert (code, lines) == (0, [])
    comments = [ln for ln in out.splitlines() if ln.startswith("# ")]
    assert comments == ["# not checked offline: which cluster --address auto finds (Ray looks for it as it joins); "
                        "whether the cluster at auto can place the workers (its resources)",
                        "# results/seed-reduce-lr: a new run"]
    code, out, lines = _check([SPEC, "--set", "scaling.storage_path=s3://team-ml-data/plateau", "--wait",
                               "--follow", "--wait-server", "5", "--address", "http://127.0.0.1:8265"],
                              tmp_path, {}, monkeypatch, capsys)
    assert (code, lines) == (0, [])
    assert out.splitlines()[-1].startswith("# not checked offline: whether the job server answers")
    code, out, lines = _check([SPEC, "--submit", "--address", "127.0.0.1:6379"], tmp_path, {}, monkeypatch, capsys)
    assert (code, out) == (2, "") and lines[0].startswith("plateau: '127.0.0.1:6379' is not a job server address")


def test_check_flags_the_example_bucket_as_submit_does(tmp_path, monkeypatch, capsys):
    from service import jobs

    spec = str(ROOT / "jobs" / "cluster-seed-reduce-lr.yaml")
    code, out, lines = _check([spec], tmp_path, {}, monkeypatch, capsys)
    assert (code, out) == (2, "")
    submit = jobs.submit(spec, "http://127.0.0.1:9", [], wait=False, follow=False)
    submitted = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("plateau:")]
    assert submit == 2 and lines == submitted == [
        "plateau: scaling.storage_path s3://YOUR-BUCKET/plateau/checkpoints names an example bucket; put your own "
        "bucket there (e.g. --set scaling.storage_path=s3://my-team-ml/plateau/...)"]


def test_full_mnist_not_cached_is_skipped_and_said(tmp_path, monkeypatch, capsys):
    code, out, lines = _check([SPEC, "--data", "mnist"], tmp_path, {"KERAS_HOME": str(tmp_path / "keras")},
                              monkeypatch, capsys)
    assert (code, lines) == (0, [])
    assert (f"# not checked offline: the data mnist (full MNIST is not in {tmp_path}/keras/datasets yet: train "
            "downloads it); whether an embedded Ray can place the workers (its resources)") in out.splitlines()
    (tmp_path / "keras" / "datasets").mkdir(parents=True)
    (tmp_path / "keras" / "datasets" / "mnist.npz").write_text("not an archive")  # cached, so read: and refused
    code, out, lines = _check([SPEC, "--data", "mnist"], tmp_path, {"KERAS_HOME": str(tmp_path / "keras")},
                              monkeypatch, capsys)
    assert (code, out) == (2, "") and len(lines) == 1 and "mnist.npz: not an .npz archive" in lines[0]


def test_a_cluster_ray_start_left_running_is_refused_by_check_and_train_alike(tmp_path, monkeypatch, capsys):
    """Without an address, an embedded Ray cannot run beside a `ray start` cluster of this machine
    (ray.init would join it; Ray Train's helpers would find it): one line, exit 2, from both.
    A file such a cluster left behind, with nothing answering, is no cluster."""
    ray_tmp = tmp_path / "raytmp"
    (ray_tmp / "ray").mkdir(parents=True)
    argv = [SPEC, "--data", "sample", "--output", str(tmp_path / "results")]
    with socket.socket() as head:  # what answers at the recorded address
        head.bind(("127.0.0.1", 0))
        head.listen()
        address = f"127.0.0.1:{head.getsockname()[1]}"
        (ray_tmp / "ray" / "ray_current_cluster").write_text(address + "\n")
        train = _plateau(["train", *argv], tmp_path, {"RAY_TMPDIR": str(ray_tmp)})
        code, out, lines = _check(argv, tmp_path, {"RAY_TMPDIR": str(ray_tmp)}, monkeypatch, capsys)
    expected = [f"plateau: a Ray cluster started with 'ray start' runs on this machine ({address}); train on it "
                "with --address auto, or stop it with 'ray stop' to train on an embedded Ray"]
    assert train.returncode == 2 and [ln for ln in train.stderr.splitlines() if ln.startswith("plateau:")] == expected
    assert (code, out, lines) == (2, "", expected)
    code, out, lines = _check(argv, tmp_path, {"RAY_TMPDIR": str(ray_tmp)}, monkeypatch, capsys)  # nothing answers now
    assert (code, lines) == (0, [])


@pytest.mark.parametrize("flags", [["--data", "PARQUET"], ["--submit", "--address", "http://127.0.0.1:8265"],
                                   ["--data", "sample", "--address", "auto"]], ids=["parquet", "submit", "address"])
def test_check_reads_and_checks_without_ray_tensorflow_or_jax(flags, tmp_path):
    """Every path of check (the data read with pyarrow, a submission, an address, a study's trials)
    leaves Ray, TensorFlow and JAX unimported."""
    from service import data as data_lib

    data_lib.export_parquet(_arrays(), tmp_path / "pq")
    flags = [str(tmp_path / "pq") if f == "PARQUET" else f for f in flags]
    code = ("import sys; from service.cli import main; rc = main(sys.argv[1:]); "
            "print('IMPORTED', sorted(m for m in ('ray', 'tensorflow', 'tf_keras', 'keras', 'jax') if m in sys.modules),"
            " file=sys.stderr); sys.exit(rc)")
    for spec in (SPEC, str(ROOT / "jobs" / "seed-comparison.yaml")):
        done = subprocess.run([sys.executable, "-c", code, "check", spec, *flags, "--set", "training.batch_size=10",
                               "--output", str(tmp_path / "out")], cwd=tmp_path, capture_output=True, text=True,
                              timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert done.returncode == 0, done.stderr
        assert done.stderr.splitlines()[-1] == "IMPORTED []", done.stderr
