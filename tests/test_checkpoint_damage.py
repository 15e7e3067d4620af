"""A damaged checkpoint costs one epoch, not the run (service/checkpoints/resume.py's `resume_point`).

Fast: checkpoints written here by the workers' own writer (`layout.write`, zeros) in Ray Train's
layout (its own snapshot model), each kind of damage found and named, with and without the
checkpoint's manifest, the newest readable one chosen, the damaged ones set aside and
Ray Train's record rewritten so that Ray Train itself reads the good one as its latest. Slow: a
real run interrupted by SIGTERM, its newest checkpoint damaged on disk, and the same command:
it resumes from the one before and ends with the history of the run that never stopped; with
every checkpoint damaged, one line and exit 2 before Ray starts.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from service import cli
from service.checkpoints import layout, resume
from service.checkpoints.resume import DAMAGED_PREFIX, RAY_SNAPSHOT_FILE, CheckpointsDamaged
from service.spec import ModelSpec, SpecError, dump_spec, load_spec
from tests.support.limits import COMMAND_S, LONG_RUN_S

HIDDEN = 8
MODEL = ModelSpec(hidden_units=HIDDEN).weight_shapes()  # what the driver holds a checkpoint's model against


def seed_state_shapes(hidden_units: int) -> dict[str, tuple[int, ...]]:
    """Every array the seed model (784 -> hidden_units -> 10, Adam) saves, by name, with its shape."""
    weights = ModelSpec(hidden_units=hidden_units).weight_shapes()
    arrays: dict[str, tuple[int, ...]] = {f"model/{n}": s for n, s in weights.items()}
    arrays["optimizer/iterations"] = ()
    for slot in ("m", "v"):  # Adam's moments
        arrays.update({f"optimizer/{slot}/model/{n}": s for n, s in weights.items()})
    arrays["optimizer/learning_rate"] = ()
    return arrays


def write_checkpoint(checkpoints_dir: Path, name: str, epoch: int, best: bool = False) -> Path:
    """A checkpoint of the seed model with HIDDEN units, as rank 0 and 1 write it (zeros)."""
    directory = checkpoints_dir / name
    directory.mkdir(parents=True)
    arrays = {n: np.zeros(shape, np.float32) for n, shape in seed_state_shapes(HIDDEN).items()}
    best_weights = [np.zeros(shape, np.float32) for shape in MODEL.values()] if best else None
    layout.write(directory, arrays, list(MODEL), epoch, {"reduce_lr": {"best": 0.3, "wait": 1},
                                                         "early_stopping": {"wait": 0, "best_weights": best_weights}})
    for rank in (0, 1):
        layout.write_trace(directory, rank, [{"epoch": e, "rank": rank} for e in range(1, epoch + 1)])
    return directory


def ray_snapshot(names_by_epoch: dict[int, str]) -> str:
    """Ray Train's checkpoint manager snapshot of these checkpoints, the last one latest."""
    from ray.train.v2._internal.execution.checkpoint.checkpoint_manager import (_CheckpointManagerState,
                                                                                 _TrainingResultState)

    results = [_TrainingResultState(checkpoint_dir_name=n, metrics={"epoch": e, "val_loss": 0.3})
               for e, n in sorted(names_by_epoch.items())]
    return _CheckpointManagerState(
        checkpoint_results=results, checkpoint_report_indices=[e - 1 for e in sorted(names_by_epoch)],
        latest_checkpoint_result=results[-1], pending_training_results=[], pending_validation_specs=[],
        current_report_index=max(names_by_epoch), validated_checkpoint_dir_names=[],
        timed_out_validation_checkpoint_dir_names=[], failed_validation_checkpoint_dir_names=[]).model_dump_json()


@pytest.fixture
def checkpoints_dir(tmp_path) -> Path:
    """A run interrupted after epoch 4 that kept the checkpoints of epochs 2, 3 and 4."""
    run = tmp_path / "checkpoints" / "seed"
    names = {e: f"checkpoint_2026-11-27_13-5{e}-00.000000" for e in (2, 3, 4)}
    for epoch, name in names.items():
        write_checkpoint(run, name, epoch, best=epoch == 4)
    (run / RAY_SNAPSHOT_FILE).write_text(ray_snapshot(names))
    return run


def named(run: Path, epoch: int) -> Path:
    return resume.by_epoch(run)[epoch]


# ---------------------------------------------------------------------------------------------
# What counts as damaged


def test_the_arrays_the_driver_expects_are_the_ones_a_real_model_saves(tmp_path):
    from service.engines.tf_keras import state
    from service.engines.tf_keras.model import build_model

    model = build_model(ModelSpec(hidden_units=HIDDEN))
    model.optimizer.build(model.trainable_variables)
    saved = {name: tuple(array.shape) for name, array in state.state_arrays(model).items()}
    assert saved == seed_state_shapes(HIDDEN)
    assert {n[len("model/"):]: s for n, s in saved.items() if n.startswith("model/")} == MODEL
    state.save(tmp_path, model, 1, {})  # the manifest lists every array, with its dtype
    written = json.loads((tmp_path / layout.STATE_FILE).read_text())[layout.MANIFEST]
    assert {n: tuple(a["shape"]) for n, a in written.items()} == saved
    assert written["optimizer/iterations"]["dtype"] == "int64" and written["model/0.dense/kernel"]["dtype"] == "float32"
    assert resume.damage(tmp_path, 1, MODEL) is None


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_a_byte_inside_an_array(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[1000] ^= 0xFF  # inside the first array's data, past its zip and npy headers
    path.write_bytes(bytes(data))


def drop_array(path: Path, name: str) -> None:
    with np.load(path) as saved:
        kept = {k: saved[k] for k in saved.files if k != name}
    np.savez(path, **kept)


@pytest.mark.parametrize("harm, why", [
    (lambda d: truncate(d / "weights.npz"), "weights.npz: File is not a zip file"),
    (lambda d: (d / "weights.npz").write_bytes(b""), "weights.npz: No data left in file"),
    (lambda d: flip_a_byte_inside_an_array(d / "weights.npz"),
     "weights.npz: Bad CRC-32 for file 'model/0.dense/kernel.npy'"),
    (lambda d: drop_array(d / "weights.npz", "optimizer/v/model/2.dense/bias"),
     "weights.npz has no array optimizer/v/model/2.dense/bias"),
    (lambda d: drop_array(d / "weights.npz", "best/0.dense/bias"), "weights.npz has no array best/0.dense/bias"),
    (lambda d: (d / "weights.npz").unlink(), "weights.npz: No such file or directory"),
    (lambda d: (d / "state.json").write_text('{"epoch": 4, "callb'),
     "state.json: Unterminated string starting at: line 1 column 14 (char 13)"),
    (lambda d: (d / "state.json").write_text('{"epoch": 3, "callbacks": {}}'), "state.json is of epoch 3, not 4"),
    (lambda d: (d / "state.json").write_text('{"epoch": 4}'), "state.json: no 'callbacks'"),
    (lambda d: (d / "trace-rank1.jsonl").write_text('{"epoch": 1}\n{"epo'),
     "trace-rank1.jsonl: Unterminated string starting at: line 1 column 2 (char 1)"),
    (lambda d: shutil.rmtree(d), "its folder is missing"),
])
def test_each_kind_of_damage_is_found_and_named(checkpoints_dir, harm, why):
    latest, before = named(checkpoints_dir, 4), named(checkpoints_dir, 3)
    assert resume.damage(latest, 4, MODEL) is None
    harm(latest)
    found = resume.damage(latest, 4, MODEL)
    assert found is not None and found.startswith(why), found
    assert resume.damage(before, 3, MODEL) is None  # the one before is whole


def test_the_model_of_another_size_is_damage_too(checkpoints_dir):
    assert resume.damage(named(checkpoints_dir, 4), 4, ModelSpec(hidden_units=HIDDEN + 1).weight_shapes()) == \
        f"weights.npz: model/0.dense/kernel has shape (784, {HIDDEN}), not (784, {HIDDEN + 1})"


def test_the_manifest_not_the_model_says_which_arrays_a_checkpoint_holds(checkpoints_dir):
    latest = named(checkpoints_dir, 4)
    assert resume.damage(latest, 4) is None  # no model to compare with: the checkpoint's own manifest
    drop_array(latest / "weights.npz", "optimizer/m/model/0.dense/bias")
    assert resume.damage(latest, 4) == "weights.npz has no array optimizer/m/model/0.dense/bias"
    before = named(checkpoints_dir, 3)
    with np.load(before / "weights.npz") as saved:
        arrays = {k: saved[k] for k in saved.files}
    np.savez(before / "weights.npz", **{**arrays, "optimizer/iterations": np.zeros((), np.float64)})
    assert resume.damage(before, 3) == "weights.npz: optimizer/iterations is float64, not float32"


def without_manifest(directory: Path) -> None:
    """The checkpoint as written before state.json listed the arrays."""
    state = json.loads((directory / "state.json").read_text())
    del state[layout.MANIFEST]
    (directory / "state.json").write_text(json.dumps(state))


@pytest.mark.parametrize("harm, why", [
    (lambda d: truncate(d / "weights.npz"), "weights.npz: File is not a zip file"),
    (lambda d: flip_a_byte_inside_an_array(d / "weights.npz"),
     "weights.npz: Bad CRC-32 for file 'model/0.dense/kernel.npy'"),
    (lambda d: drop_array(d / "weights.npz", "best/0.dense/bias"), "weights.npz has no array best/0.dense/bias"),
    (lambda d: drop_array(d / "weights.npz", "model/2.dense/bias"), "weights.npz has no array model/2.dense/bias"),
])
def test_a_checkpoint_without_a_manifest_is_still_read_and_checked(checkpoints_dir, harm, why):
    latest = named(checkpoints_dir, 4)
    without_manifest(latest)
    assert resume.damage(latest, 4, MODEL) is None
    harm(latest)
    assert resume.damage(latest, 4, MODEL) == why


# ---------------------------------------------------------------------------------------------
# Where a run resumes


def test_a_whole_latest_checkpoint_is_where_the_run_resumes_and_nothing_moves(checkpoints_dir):
    before = (checkpoints_dir / RAY_SNAPSHOT_FILE).read_text()
    said: list[str] = []
    point = resume.resume_point(checkpoints_dir, MODEL, said.append)
    assert (point.epoch, point.directory, point.damaged, said) == (4, named(checkpoints_dir, 4), [], [])
    assert (checkpoints_dir / RAY_SNAPSHOT_FILE).read_text() == before


def test_a_damaged_latest_is_set_aside_and_ray_train_reads_the_one_before_as_its_latest(checkpoints_dir):
    from ray.train.v2._internal.execution.checkpoint.checkpoint_manager import _CheckpointManagerState

    damaged, good = named(checkpoints_dir, 4), named(checkpoints_dir, 3)
    truncate(damaged / "weights.npz")
    looked = resume.find_resume_point(checkpoints_dir, MODEL)  # what `plateau check` reads: changes nothing
    assert (looked.epoch, looked.damaged) == (3, [(4, damaged.name, "weights.npz: File is not a zip file")])
    assert damaged.is_dir()
    said: list[str] = []
    point = resume.resume_point(checkpoints_dir, MODEL, said.append)
    assert (point.epoch, point.directory) == (3, good)
    aside = checkpoints_dir / (DAMAGED_PREFIX + damaged.name)
    assert said == [f"warning: the checkpoint of epoch 4 cannot be read (weights.npz: File is not a zip file); "
                    f"set aside as {aside}; the run resumes from the checkpoint of epoch 3"]
    assert aside.is_dir() and not damaged.exists()
    # Ray Train's own model of its record: the latest is epoch 3's, and every checkpoint it
    # lists exists (Ray Train refuses a record naming a missing checkpoint).
    state = _CheckpointManagerState.model_validate(json.loads((checkpoints_dir / RAY_SNAPSHOT_FILE).read_text()))
    assert state.latest_checkpoint_result.checkpoint_dir_name == good.name
    assert [r.checkpoint_dir_name for r in state.checkpoint_results] == [named(checkpoints_dir, 2).name, good.name]
    assert state.checkpoint_report_indices == [1, 2] and state.current_report_index == 4
    assert all((checkpoints_dir / r.checkpoint_dir_name).is_dir() for r in state.checkpoint_results)
    assert resume.latest(checkpoints_dir) == (3, good)
    assert resume.resume_point(checkpoints_dir, MODEL, said.append).epoch == 3 and len(said) == 1  # once


def test_two_damaged_checkpoints_fall_back_two_epochs(checkpoints_dir):
    last, before = named(checkpoints_dir, 4), named(checkpoints_dir, 3)
    (last / "state.json").write_text("{")
    truncate(before / "weights.npz")
    said: list[str] = []
    point = resume.resume_point(checkpoints_dir, MODEL, said.append)
    assert point.epoch == 2 and [epoch for epoch, _, _ in point.damaged] == [4, 3]
    assert len(said) == 2 and said[0].startswith("warning: the checkpoint of epoch 4 cannot be read (state.json: ")
    assert resume.latest(checkpoints_dir)[0] == 2


def test_no_readable_checkpoint_is_one_line_naming_the_folder_and_fresh(checkpoints_dir):
    for epoch in (2, 3, 4):
        truncate(named(checkpoints_dir, epoch) / "weights.npz")
    before = sorted(p.name for p in checkpoints_dir.iterdir())
    with pytest.raises(CheckpointsDamaged) as refused:
        resume.resume_point(checkpoints_dir, MODEL, print)
    assert str(refused.value) == (
        f"no checkpoint in {checkpoints_dir} can be read (epoch 4: weights.npz: File is not a zip file; epoch 3: "
        f"weights.npz: File is not a zip file; epoch 2: weights.npz: File is not a zip file); use --fresh to "
        f"train the run again from the start")
    assert sorted(p.name for p in checkpoints_dir.iterdir()) == before  # nothing moved: --fresh decides


def test_a_damaged_ray_train_record_is_one_line(checkpoints_dir):
    (checkpoints_dir / RAY_SNAPSHOT_FILE).write_text('{"checkpoint_results": [{"metrics": {}}]}')
    snapshot = re.escape(str(checkpoints_dir / RAY_SNAPSHOT_FILE))
    with pytest.raises(CheckpointsDamaged, match=rf"^{snapshot} is damaged \(no 'checkpoint_dir_name'\), so the "
                                                 r"run cannot resume; use --fresh"):
        resume.find_resume_point(checkpoints_dir, MODEL)
    (checkpoints_dir / RAY_SNAPSHOT_FILE).unlink()
    assert resume.find_resume_point(checkpoints_dir, MODEL) == resume.ResumePoint()  # a new run


def test_keep_is_at_least_two():
    spec = "jobs/seed-reduce-lr.yaml"
    with pytest.raises(SpecError, match=r"checkpoint.keep: keep at least 2, so that a run whose last checkpoint "
                                        r"is damaged resumes from the one before \(null keeps all\) \(got 1\)"):
        load_spec(spec, ["checkpoint.keep=1"])
    assert load_spec(spec, ["checkpoint.keep=2"]).checkpoint.keep == 2
    assert load_spec(spec, ["checkpoint.keep=null"]).checkpoint.keep is None


def test_check_says_where_train_would_resume(tmp_path, capsys):
    spec = load_spec("jobs/seed-reduce-lr.yaml", ["data.source=sample", f"output={tmp_path}",
                                                  f"model.hidden_units={HIDDEN}"])
    (tmp_path / "spec.yaml").write_text(dump_spec(spec))
    run = tmp_path / spec.name / "checkpoints" / spec.name
    names = {e: f"checkpoint_2026-11-27_13-5{e}-00.000000" for e in (1, 2)}
    for epoch, name in names.items():
        write_checkpoint(run, name, epoch)
    (run / RAY_SNAPSHOT_FILE).write_text(ray_snapshot(names))
    (tmp_path / spec.name / "spec.yaml").write_text(dump_spec(spec))
    args = ["check", str(tmp_path / "spec.yaml")]
    assert cli.main(args) == 0
    assert capsys.readouterr().out.splitlines()[-1] == \
        f"# {tmp_path / spec.name}: interrupted after epoch 2; train resumes it from its last checkpoint"
    truncate(run / names[2] / "weights.npz")
    assert cli.main(args) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"# {tmp_path / spec.name}: interrupted; its checkpoint of epoch 2 cannot be read, so train sets it aside "
        f"and resumes after epoch 1")
    assert (run / names[2]).is_dir()  # check moves nothing
    truncate(run / names[1] / "weights.npz")
    assert cli.main(args) == 2
    assert capsys.readouterr().err.startswith(f"plateau: no checkpoint in {run} can be read (epoch 2: ")


# ---------------------------------------------------------------------------------------------
# Real runs (slow)

ONE_WORKER = "scaling.num_workers=1"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The run that never stops."""
    from tests.support.runs import reference_run

    return reference_run(tmp_path_factory.mktemp("reference"), ONE_WORKER)


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory) -> Path:
    """A folder holding ft.yaml (output: results) and the run SIGTERM stopped after epoch 3."""
    from tests.support.runs import DECIDING, make_spec

    here = tmp_path_factory.mktemp("interrupted")
    spec = make_spec(here, *DECIDING, ONE_WORKER, name="ft").model_copy(update={"output": "results"})
    (here / "ft.yaml").write_text(dump_spec(spec))
    driver = subprocess.Popen([sys.executable, "-m", "service.cli", "train", "ft.yaml"], cwd=here,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        for line in driver.stdout:
            if line.startswith("epoch 3/"):
                break
        os.kill(driver.pid, signal.SIGTERM)
        driver.communicate(timeout=COMMAND_S)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode == 143
    return here


def copy_of(interrupted: Path, tmp_path: Path) -> tuple[Path, Path, int]:
    """A copy of the interrupted run's folder: (the copy, its checkpoints, the latest epoch)."""
    here = tmp_path / "copy"
    shutil.copytree(interrupted, here)
    run = here / "results" / "ft" / "checkpoints" / "ft"
    # The signal came after the epoch 3 line; epoch 3's checkpoint may not have been registered
    # yet (and on a slow machine epoch 4's may have been).
    latest, _ = resume.latest(run)
    assert latest in (2, 3, 4) and latest - 1 in resume.by_epoch(run)  # keep: 2
    return here, run, latest


def train_again(here: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "service.cli", "train", "ft.yaml"], cwd=here,
                          capture_output=True, text=True, timeout=LONG_RUN_S)


def assert_resumed_one_epoch_back(done, run: Path, latest: int, why: str, reference) -> None:
    from service.report import files as run_files
    from tests.support.runs import without_seconds

    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    name = next(p.name for p in run.iterdir() if p.name.startswith(DAMAGED_PREFIX))
    assert f"warning: the checkpoint of epoch {latest} cannot be read ({why}); set aside as {run / name}; " \
           f"the run resumes from the checkpoint of epoch {latest - 1}" in done.stderr.splitlines()
    assert f"ft: resuming after epoch {latest - 1} from its last checkpoint (use --fresh to start over)" \
           in done.stdout.splitlines()
    printed = [int(m) for m in re.findall(r"^epoch (\d+)/", done.stdout, flags=re.M)]
    assert printed == list(range(latest, 6))  # the epoch lost, trained again, and the rest
    out = run.parents[1]
    assert without_seconds(run_files.read_history(out / "history.csv")) == without_seconds(reference.history)
    assert run_files.read_decisions(out / "decisions.jsonl") == reference.decisions
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test_accuracy"] == reference.summary["test_accuracy"]


@pytest.mark.slow
def test_a_truncated_latest_weights_file_costs_one_epoch(interrupted, reference, tmp_path):
    here, run, latest = copy_of(interrupted, tmp_path)
    truncate(resume.latest(run)[1] / "weights.npz")
    done = train_again(here)
    assert_resumed_one_epoch_back(done, run, latest, "weights.npz: File is not a zip file", reference)


@pytest.mark.slow
def test_a_corrupt_latest_state_file_costs_one_epoch(interrupted, reference, tmp_path):
    here, run, latest = copy_of(interrupted, tmp_path)
    (resume.latest(run)[1] / "state.json").write_text('{"epoch": ')
    done = train_again(here)
    assert_resumed_one_epoch_back(done, run, latest, "state.json: Expecting value: line 1 column 11 (char 10)",
                                  reference)


@pytest.mark.slow
def test_every_checkpoint_damaged_is_one_line_and_exit_2(interrupted, tmp_path):
    here, run, _ = copy_of(interrupted, tmp_path)
    for directory in resume.by_epoch(run).values():
        truncate(directory / "weights.npz")
    done = train_again(here)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    lines = [ln for ln in done.stderr.splitlines() if not ln.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith(f"plateau: no checkpoint in {run.resolve()} can be read (epoch ")
    assert lines[0].endswith("; use --fresh to train the run again from the start")
    assert "starting Ray" not in done.stdout
    fresh = subprocess.run([sys.executable, "-m", "service.cli", "check", "ft.yaml", "--fresh"], cwd=here,
                           capture_output=True, text=True, timeout=COMMAND_S)
    assert fresh.returncode == 0  # --fresh is the way out it names
