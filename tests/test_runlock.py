"""One writer per run folder (service/runlock.py).

Fast: the lock module on files made here (create, refuse, take over a gone holder, heartbeat,
release on every exit, the folders above and under a held one). Slow: real `plateau train` and
`plateau compare` processes racing for one folder, a driver killed with SIGKILL whose lock the
next run takes over, and a train run aimed at a trial folder of a running study.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from service import runlock
from service.errors import BadInput
from service.runlock import LOCK_FILE, RunLocked
from service.signals import Interrupted
from tests.support.limits import COMMAND_S, LONG_RUN_S, REFUSED_WITHIN_S

HOST = socket.gethostname()
ROOT = Path(__file__).resolve().parents[1]


def lock_of(folder: Path) -> dict:
    return json.loads((folder / LOCK_FILE).read_text())


def write_lock(folder: Path, **fields) -> dict:
    """A lock file as another command would have left it."""
    now = time.time()
    data = {"host": HOST, "pid": os.getpid(), "started": runlock._stamp(now - 60), "heartbeat": runlock._stamp(now),
            "command": "plateau train other.yaml", "pid_started": runlock.process_started(os.getpid()),
            "id": "theirs", **fields}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK_FILE).write_text(json.dumps(data))
    return data


def dead_pid() -> int:
    """The pid of a process that has ended."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


# ---------------------------------------------------------------------------------------------
# The lock module


def test_a_held_folder_has_a_lock_naming_its_holder_until_the_block_ends(tmp_path):
    folder = tmp_path / "results" / "seed"
    before = time.time()
    with runlock.hold(folder, "plateau train seed.yaml", echo=print) as lock:
        held = lock_of(folder)
        assert (held["host"], held["pid"], held["command"]) == (HOST, os.getpid(), "plateau train seed.yaml")
        assert held["pid_started"] == runlock.process_started(os.getpid())
        assert held["started"] == held["heartbeat"]
        assert before - 1 <= runlock._seconds(held["started"]) <= time.time()
        assert runlock.holder(folder).id == held["id"] == lock.me.id
        (folder / "history.csv").write_text("epoch\n")
    assert not (folder / LOCK_FILE).exists()
    assert (folder / "history.csv").exists() and runlock.holder(folder) is None


def test_a_second_command_is_refused_with_one_line_naming_the_holder(tmp_path):
    folder = tmp_path / "seed"
    with runlock.hold(folder, "plateau train seed.yaml", echo=print) as lock:
        with pytest.raises(RunLocked) as refused:
            with runlock.hold(folder, "plateau train seed.yaml --epochs 3", echo=print):
                pass
        assert lock_of(folder)["id"] == lock.me.id  # the refused command left the lock alone
    assert str(refused.value) == (
        f"{folder} is in use by pid {os.getpid()} on {HOST} since {lock.me.started} (plateau train seed.yaml); "
        f"wait for it to end, or use --name to run under another name")
    assert isinstance(refused.value, BadInput) and "\n" not in str(refused.value)


def test_only_one_of_many_commands_starting_together_gets_the_folder(tmp_path):
    folder = tmp_path / "seed"
    folder.mkdir()
    start, won, refused = threading.Barrier(8), [], []
    release = threading.Event()

    def contender(i: int) -> None:
        start.wait()
        try:
            with runlock.hold(folder, f"command {i}", echo=print):
                won.append(i)
                release.wait(10)
        except RunLocked as exc:
            refused.append(str(exc))

    threads = [threading.Thread(target=contender, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while len(won) + len(refused) < 8 and time.monotonic() < deadline:
        time.sleep(0.05)
    release.set()
    for t in threads:
        t.join(10)
    assert len(won) == 1 and len(refused) == 7
    assert all(f"(command {won[0]})" in line for line in refused)


def test_a_lock_whose_process_is_gone_is_taken_over_with_a_line(tmp_path):
    folder = tmp_path / "seed"
    gone = write_lock(folder, pid=dead_pid())
    said: list[str] = []
    with runlock.hold(folder, "plateau train seed.yaml", echo=said.append) as lock:
        assert lock_of(folder)["id"] == lock.me.id
    assert said == [f"warning: took over {folder / LOCK_FILE} from pid {gone['pid']} on {HOST} since "
                    f"{gone['started']} (plateau train other.yaml): its process is gone"]
    assert sorted(p.name for p in folder.iterdir()) == []  # nothing left beside: no stale copies


def test_a_pid_that_is_another_process_now_is_gone(tmp_path):
    folder = tmp_path / "seed"
    write_lock(folder, pid=os.getpid(), pid_started=runlock.process_started(os.getpid()) - 1)
    said: list[str] = []
    with runlock.hold(folder, "x", echo=said.append):
        pass
    assert len(said) == 1 and said[0].endswith(": its pid is another process now")


def test_a_holder_on_another_host_is_gone_only_when_its_heartbeat_is_old(tmp_path):
    folder = tmp_path / "seed"
    write_lock(folder, host="other-node", pid=1, heartbeat=runlock._stamp(time.time() - 30))
    with pytest.raises(RunLocked, match=r"in use by pid 1 on other-node since"):
        with runlock.hold(folder, "x", echo=print):
            pass
    write_lock(folder, host="other-node", pid=1, heartbeat=runlock._stamp(time.time() - 300))
    said: list[str] = []
    with runlock.hold(folder, "x", echo=said.append):
        pass
    assert len(said) == 1
    assert re.search(r"from pid 1 on other-node since .*: its last heartbeat is 30[01]s old \(more than 120s\)$",
                     said[0]), said


def test_the_holder_refreshes_its_heartbeat(tmp_path):
    folder = tmp_path / "seed"
    with runlock.hold(folder, "x", echo=print, heartbeat_s=0.2):
        first = lock_of(folder)
        time.sleep(2.2)
        later = lock_of(folder)
    assert later["id"] == first["id"] and later["started"] == first["started"]
    assert runlock._seconds(later["heartbeat"]) > runlock._seconds(first["heartbeat"])  # stamps in whole seconds


def test_an_unreadable_lock_is_one_being_written_then_a_damaged_one(tmp_path):
    folder = tmp_path / "seed"
    folder.mkdir()
    (folder / LOCK_FILE).write_text("")
    with pytest.raises(RunLocked, match=r"is being taken by another command"):
        with runlock.hold(folder, "x", echo=print):
            pass
    old = time.time() - 60
    os.utime(folder / LOCK_FILE, (old, old))
    said: list[str] = []
    with runlock.hold(folder, "x", echo=said.append):
        pass
    assert said == [f"warning: took over {folder / LOCK_FILE}: it has been unreadable for more than 10s"]


@pytest.mark.parametrize("error", [BadInput("bad data"), Interrupted(signal.SIGTERM), RuntimeError("a bug")])
def test_the_lock_goes_on_every_way_out(tmp_path, error):
    folder = tmp_path / "results" / "seed"
    with pytest.raises(type(error)):
        with runlock.hold(folder, "x", echo=print):
            assert (folder / LOCK_FILE).exists()
            raise error
    assert not (tmp_path / "results").exists()  # made for the lock, and nothing else was written there
    kept = tmp_path / "kept"
    kept.mkdir()
    with pytest.raises(type(error)):
        with runlock.hold(kept, "x", echo=print):
            raise error
    assert kept.is_dir() and not list(kept.iterdir())


def test_a_folder_inside_a_held_one_is_refused_and_a_study_sees_its_trials(tmp_path):
    study = tmp_path / "results" / "st"
    with runlock.hold(study, "plateau compare st.yaml", echo=print):
        with pytest.raises(RunLocked) as inside:
            with runlock.hold(study / "trials" / "st-base-s7", "plateau train t.yaml", echo=print):
                pass
    assert str(inside.value).startswith(f"{study / 'trials' / 'st-base-s7'} is inside {study}, which is in use by "
                                        f"pid {os.getpid()} on {HOST}")
    assert not (study / "trials").exists()
    with runlock.hold(study / "trials" / "st-base-s7", "plateau train t.yaml", echo=print):
        runlock.check_free(study)  # the study's own folder is free...
        with pytest.raises(RunLocked, match=r"st-base-s7 is in use by pid"):
            runlock.check_free(study, also=("trials/*",))  # ...but a study minds its trials


def test_clear_empties_a_held_folder_but_keeps_its_lock(tmp_path):
    folder = tmp_path / "seed"
    with runlock.hold(folder, "x", echo=print):
        (folder / "checkpoints" / "seed").mkdir(parents=True)
        (folder / "summary.json").write_text("{}")
        runlock.clear(folder)
        assert [p.name for p in folder.iterdir()] == [LOCK_FILE]


# ---------------------------------------------------------------------------------------------
# Real runs (slow)

SAMPLE = ("--data", "sample", "--epochs", "2", "--workers", "1")


def plateau_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "service.cli", *args]


@pytest.mark.slow
def test_two_trains_of_one_name_one_trains_the_other_is_refused_at_once(tmp_path):
    out = tmp_path / "results"
    first = subprocess.Popen(plateau_cmd("train", "jobs/seed-reduce-lr.yaml", *SAMPLE, "--output", str(out)),
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (out / "seed-reduce-lr" / LOCK_FILE).exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        began = time.monotonic()
        second = subprocess.run(plateau_cmd("train", "jobs/seed-reduce-lr.yaml", *SAMPLE, "--output", str(out)),
                                cwd=ROOT, capture_output=True, text=True, timeout=COMMAND_S)
        refused_in = time.monotonic() - began
        stdout, stderr = first.communicate(timeout=LONG_RUN_S)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, stdout + stderr
    assert second.returncode == 2 and second.stdout == ""
    assert "Traceback" not in second.stderr
    lines = [ln for ln in second.stderr.splitlines() if not ln.startswith("warning: ")]
    assert lines == [f"plateau: {out / 'seed-reduce-lr'} is in use by pid {first.pid} on {HOST} since "
                     f"{lines[0].split(' since ')[1].split(' ')[0]} (plateau train jobs/seed-reduce-lr.yaml "
                     f"{' '.join(SAMPLE)} --output {out}); wait for it to end, or use --name to run under another name"]
    assert refused_in < REFUSED_WITHIN_S  # before any data, Ray or worker: the interpreter's start-up, on busy cores
    summary = json.loads((out / "seed-reduce-lr" / "summary.json").read_text())
    assert (summary["epochs_run"], summary["workers"]) == (2, 1)
    assert not (out / "seed-reduce-lr" / LOCK_FILE).exists()
    # --fresh never overrides a live lock, and removes nothing: checked before anything is deleted
    with runlock.hold(out / "seed-reduce-lr", "a live holder", echo=print):
        fresh = subprocess.run(plateau_cmd("train", "jobs/seed-reduce-lr.yaml", *SAMPLE, "--output", str(out),
                                           "--fresh"), cwd=ROOT, capture_output=True, text=True, timeout=COMMAND_S)
    assert fresh.returncode == 2 and "is in use by pid" in fresh.stderr and "(a live holder)" in fresh.stderr
    assert (out / "seed-reduce-lr" / "summary.json").exists()


@pytest.mark.slow
def test_a_train_aimed_at_a_trial_folder_of_a_running_study_is_refused(tmp_path):
    out = tmp_path / "results"
    study = subprocess.Popen(plateau_cmd("compare", "jobs/seed-comparison.yaml", "--data", "sample", "--epochs", "2",
                                         "--output", str(out), "--set", "seeds=[7]"),
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "seed-comparison" / LOCK_FILE).exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        trial = "seed-comparison-reduce_lr-off-s7"
        aimed = subprocess.run(plateau_cmd("train", "jobs/seed-reduce-lr.yaml", *SAMPLE, "--output",
                                           str(out / "seed-comparison" / "trials"), "--name", trial),
                               cwd=ROOT, capture_output=True, text=True, timeout=COMMAND_S)
        again = subprocess.run(plateau_cmd("compare", "jobs/seed-comparison.yaml", "--data", "sample", "--epochs",
                                           "2", "--output", str(out), "--set", "seeds=[7]"),
                               cwd=ROOT, capture_output=True, text=True, timeout=COMMAND_S)
        stdout, stderr = study.communicate(timeout=LONG_RUN_S)
    finally:
        if study.poll() is None:
            study.kill()
    assert study.returncode == 0, stdout + stderr
    assert aimed.returncode == 2 and "Traceback" not in aimed.stderr
    folder = (out / "seed-comparison").resolve()
    assert f"plateau: {out / 'seed-comparison' / 'trials' / trial} is inside {out / 'seed-comparison'}, which is " \
           f"in use by pid {study.pid} on {HOST}" in aimed.stderr
    assert again.returncode == 2 and f"plateau: {folder} is in use by pid {study.pid} on {HOST}" in again.stderr
    assert not (folder / LOCK_FILE).exists()
    assert (folder / "trials" / trial / "summary.json").exists()  # the study's trial, untouched

