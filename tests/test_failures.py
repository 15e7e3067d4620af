"""Failures and resuming: a killed worker or driver resumes with the callbacks' state, and the
result is the run that never failed (real Ray, real TensorFlow, real process kills)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from service import train
from service.report import files as run_files
from service.runlock import LOCK_FILE
from service.signals import EXIT_SIGINT, EXIT_SIGTERM
from service.spec import dump_spec
from tests.support.limits import COMMAND_S, LONG_RUN_S, SIGNAL_EXIT_WITHIN_S
from tests.support.runs import DECIDING, make_spec, reference_run, without_seconds

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The run that never fails."""
    return reference_run(tmp_path_factory.mktemp("reference"))


@pytest.mark.heavy  # a worker group restart with max_failures: also the multi-node node-loss test's path
def test_killed_worker_resumes_to_the_run_that_never_failed(reference, tmp_path):
    spec = make_spec(tmp_path, *DECIDING, "debug.fail_at_epoch=3", "debug.fail_rank=1",
                     "scaling.max_failures=1", name="ft")
    lines: list[str] = []
    result = train.run(spec, echo=lines.append)
    assert result.ok, result.error
    # Bit-identical: same batches (epoch-keyed order), same dropout masks (step-keyed), same
    # optimizer state and callback state from the checkpoint; TF on CPU is deterministic here.
    assert without_seconds(result.history) == without_seconds(reference.history)
    assert result.decisions == reference.decisions
    assert result.summary["test_accuracy"] == reference.summary["test_accuracy"]
    assert result.summary["lr_reductions"] == reference.summary["lr_reductions"]
    # The kill lands right after epoch 3's report; whether Ray Train registered that round's
    # checkpoint first is a race, so epoch 3 is trained once or twice: with the same numbers
    # (the times differ: the epoch's seconds, the elapsed time and the ETA are left out).
    untimed = (re.sub(r"  ([0-9.]+s|elapsed \S+|eta \S+)(?=  |$)", "", line) for line in lines)
    epoch3 = {line for line in untimed if line.startswith("epoch 3/")}
    assert len(epoch3) == 1


def test_killed_driver_leaves_its_lock_and_the_same_command_takes_it_over_and_resumes(reference, tmp_path):
    """SIGKILL to the driver and the Ray it started (a lost laptop): the folder keeps the dead
    driver's lock and reads as interrupted; the same command takes the lock over with one warning
    line, resumes from the last checkpoint and ends equal to the run that never failed."""
    spec = make_spec(tmp_path, *DECIDING, name="ft")
    (tmp_path / "ft.yaml").write_text(dump_spec(spec))
    command = [sys.executable, "-m", "service.cli", "train", "ft.yaml"]
    driver = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, start_new_session=True)
    try:
        for line in driver.stdout:
            if line.startswith("epoch 2/"):
                break
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the Ray it started, at once
        driver.wait(timeout=COMMAND_S)
        # Ray's actor processes notice their raylet is gone within a second or two; until then
        # the old controller could still register a checkpoint behind the new run's back.
        time.sleep(5)
    out = Path(spec.output) / "ft"
    assert not (out / "summary.json").exists()
    assert [r["epoch"] for r in run_files.read_history(out / "history.csv")][:2] == [1, 2]  # saved before printed
    left = json.loads((out / LOCK_FILE).read_text())
    assert left["pid"] == driver.pid
    listing = subprocess.run([*command[:3], "runs", spec.output, "--json"], cwd=tmp_path, capture_output=True,
                             text=True, timeout=COMMAND_S)
    assert json.loads(listing.stdout)[0]["status"] == "interrupted", listing.stdout + listing.stderr

    again = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=LONG_RUN_S)
    assert again.returncode == 0, again.stdout + again.stderr
    assert (f"warning: took over {out / LOCK_FILE} from pid {driver.pid} on {socket.gethostname()} since "
            f"{left['started']} (plateau train ft.yaml): its process is gone") in again.stderr.splitlines()
    assert not (out / LOCK_FILE).exists()
    # The kill lands right after the epoch 2 line; epoch 2's checkpoint may or may not have
    # been registered by then (and on a slow machine epoch 3's may have been).
    resumed = re.search(r"ft: resuming after epoch (\d+) from its last checkpoint", again.stdout)
    assert resumed and 1 <= int(resumed.group(1)) < 5, again.stdout
    first_trained = int(resumed.group(1)) + 1
    printed = [int(m) for m in re.findall(r"^epoch (\d+)/", again.stdout, flags=re.M)]
    assert printed[0] == first_trained
    assert without_seconds(run_files.read_history(out / "history.csv")) == without_seconds(reference.history)
    assert run_files.read_decisions(out / "decisions.jsonl") == reference.decisions

    finished = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=COMMAND_S)
    assert finished.returncode == 0
    assert "ft already finished: see" in finished.stdout


def test_failure_without_restarts_says_where_and_keeps_what_finished(tmp_path):
    spec = make_spec(tmp_path, "training.epochs=4", "debug.fail_at_epoch=2", "debug.fail_rank=1",
                     "scaling.max_failures=0", name="dies")
    lines: list[str] = []
    result = train.run(spec, echo=lines.append)
    assert not result.ok
    assert "training failed on rank 1 during epoch 3" in result.error
    assert "the checkpoint of epoch 2 is in" in result.error and "run the same command again" in result.error
    assert lines[-1] == f"plateau: {result.error}"
    out = Path(spec.output) / "dies"
    assert [r["epoch"] for r in run_files.read_history(out / "history.csv")] == [1, 2]
    assert {(d["epoch"], d["rank"]) for d in run_files.read_decisions(out / "decisions.jsonl")} == {
        (1, 0), (1, 1), (2, 0), (2, 1)}
    assert not (out / "summary.json").exists()


def _children(pid: int) -> list:
    """Every process below `pid`: the Ray it started and Ray's workers."""
    import ray  # noqa: F401 - puts Ray's vendored psutil on sys.path
    import psutil

    return psutil.Process(pid).children(recursive=True)


def _interrupt_after_epoch_2(tmp_path: Path, signum: int, group: bool):
    """Start `plateau train` on DECIDING, send `signum` after the epoch 2 line (to the whole
    process group, as Ctrl-C in a terminal does, or to the driver alone, as `kill` and `timeout`
    do); returns the command, the finished process, its stderr, its processes and the seconds
    it took to end."""
    spec = make_spec(tmp_path, *DECIDING, name="ft")
    (tmp_path / "ft.yaml").write_text(dump_spec(spec))
    command = [sys.executable, "-m", "service.cli", "train", "ft.yaml"]
    driver = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)
    for line in driver.stdout:
        if line.startswith("epoch 2/"):
            break
    processes = _children(driver.pid)
    sent = time.monotonic()
    (os.killpg if group else os.kill)(driver.pid, signum)
    try:
        _, stderr = driver.communicate(timeout=COMMAND_S)
    finally:
        os.killpg(driver.pid, signal.SIGKILL) if driver.poll() is None else None
    return command, driver, stderr, processes, time.monotonic() - sent


def _assert_ended_cleanly(driver, stderr: str, processes: list, seconds: float, name: str, code: int, out: Path):
    assert driver.returncode == code, stderr
    assert seconds < SIGNAL_EXIT_WITHIN_S, seconds
    lines = stderr.splitlines()
    assert re.fullmatch(rf"plateau: interrupted by {name} after epoch (2|3); the checkpoint of epoch [1-3] is in "
                        rf".*/ft/checkpoints/ft: run the same command again to resume", lines[-1]), stderr
    assert not [ln for ln in lines if "SIGTERM received" in ln or "PC: @" in ln or "Traceback" in ln], stderr
    time.sleep(2)  # let the kernel reap what the driver's exit took down
    left = [p for p in processes if p.is_running() and p.status() != "zombie"]
    assert not left, [(p.pid, p.name()) for p in left]
    assert [r["epoch"] for r in run_files.read_history(out / "history.csv")][:2] == [1, 2]
    assert not (out / "summary.json").exists()


def test_sigterm_ends_the_run_cleanly_and_the_same_command_resumes_it(tmp_path):
    """SIGTERM (kill, timeout, a scheduler) to the driver alone: exit 143, one line, and no
    process of the run left: not the Ray it started, not its workers. The same command resumes
    from the last checkpoint and keeps the epochs trained before the signal as they were."""
    command, driver, stderr, processes, seconds = _interrupt_after_epoch_2(tmp_path, signal.SIGTERM, group=False)
    assert len(processes) >= 4  # gcs, raylet, the two training workers at least
    out = tmp_path / "results" / "ft"
    _assert_ended_cleanly(driver, stderr, processes, seconds, "SIGTERM", EXIT_SIGTERM, out)
    before = without_seconds(run_files.read_history(out / "history.csv"))
    again = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=LONG_RUN_S)
    assert again.returncode == 0, again.stdout + again.stderr
    resumed = re.search(r"^ft: resuming after epoch ([1-3]) from its last checkpoint", again.stdout, re.M)
    assert resumed, again.stdout
    after = without_seconds(run_files.read_history(out / "history.csv"))
    kept = int(resumed.group(1))
    assert [r["epoch"] for r in after] == [1, 2, 3, 4, 5] and after[:kept] == before[:kept]


@pytest.mark.heavy  # the same path by SIGTERM runs by default; this one also replays the whole run
def test_ctrl_c_ends_the_run_and_the_same_command_resumes_it(reference, tmp_path):
    """SIGINT to the whole process group, as Ctrl-C sends it: exit 130, one line, nothing left
    running, every finished epoch on disk; the same command resumes and ends equal to the run
    that was never interrupted."""
    command, driver, stderr, processes, seconds = _interrupt_after_epoch_2(tmp_path, signal.SIGINT, group=True)
    out = tmp_path / "results" / "ft"
    _assert_ended_cleanly(driver, stderr, processes, seconds, "SIGINT", EXIT_SIGINT, out)
    again = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=LONG_RUN_S)
    assert again.returncode == 0, again.stdout + again.stderr
    assert re.search(r"^ft: resuming after epoch [1-3] from its last checkpoint", again.stdout, re.M), again.stdout
    assert without_seconds(run_files.read_history(out / "history.csv")) == without_seconds(reference.history)
    assert run_files.read_decisions(out / "decisions.jsonl") == reference.decisions
