"""A study ends like a run on Ctrl-C and SIGTERM: exit 130 / 143, one line naming how many trials
finished and the command that resumes, no stack lines, no process of its Ray left; the trials
that finished keep their folders, the comparison files say they are partial, and the same command
resumes, reusing the finished trials (real Ray, real Tune, real signals, the bundled sample)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from service.signals import EXIT_SIGINT, EXIT_SIGTERM

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
STUDY = f"""kind: compare
name: st
base: {ROOT / 'jobs' / 'seed-reduce-lr.yaml'}
grid:
  reduce_lr.factor: [0.1, 0.5]
seeds: [7, 8]
max_concurrent_trials: 1
"""
FLAGS = ["--data", "sample", "--epochs", "1"]


def _children(pid: int) -> list:
    """Every process below `pid`: the Ray it started, Tune's trial and Ray Train's workers."""
    import ray  # noqa: F401 - puts Ray's vendored psutil on sys.path
    import psutil

    return psutil.Process(pid).children(recursive=True)


def _interrupt_when(command: str, tmp_path: Path, done_line: str, signum: int, group: bool):
    """Run `plateau COMMAND s.yaml FLAGS`, send `signum` once a stdout line contains `done_line`
    (to the whole process group, as Ctrl-C does, or to the driver alone, as `kill` does);
    returns (the process, its stdout up to then, its stderr, its processes, seconds to end)."""
    argv = [sys.executable, "-m", "service.cli", command, "s.yaml", *FLAGS]
    driver = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)
    seen = []
    try:
        for line in driver.stdout:
            seen.append(line)
            if done_line in line:
                break
        else:
            pytest.fail(f"the study ended before {done_line!r}:\n{''.join(seen)}\n{driver.stderr.read()}")
        processes = _children(driver.pid)
        sent = time.monotonic()
        (os.killpg if group else os.kill)(driver.pid, signum)
        rest, stderr = driver.communicate(timeout=90)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    return driver, "".join(seen) + rest, stderr, processes, time.monotonic() - sent


def _assert_ended_cleanly(driver, stderr: str, processes: list, seconds: float, code: int, line: str):
    assert driver.returncode == code, stderr
    assert seconds < 30, seconds
    lines = stderr.splitlines()
    assert lines and re.fullmatch(line, lines[-1]), stderr
    assert not [ln for ln in lines if "***" in ln or "SIGTERM received" in ln or "PC: @" in ln
                or "Traceback" in ln], stderr
    assert [ln for ln in lines if ln.startswith("plateau:")] == [lines[-1]], stderr
    time.sleep(2)  # let the kernel reap what the driver's exit took down
    left = [p for p in processes if p.is_running() and p.status() != "zombie"]
    assert not left, [(p.pid, p.name()) for p in left]


def test_sigterm_and_ctrl_c_end_a_study_in_one_line_and_the_same_command_resumes_it(tmp_path):
    (tmp_path / "s.yaml").write_text(STUDY)
    study = tmp_path / "results" / "st"
    first = "st-factor-0.1-s7"

    # SIGTERM to the driver alone (kill, a scheduler, `plateau stop` of a job) after the first trial
    driver, out, stderr, processes, seconds = _interrupt_when("compare", tmp_path, "| study: 1/4 trials done",
                                                              signal.SIGTERM, group=False)
    assert len(processes) >= 3  # gcs, raylet, a trial or a worker at least
    _assert_ended_cleanly(driver, stderr, processes, seconds, EXIT_SIGTERM,
                          r"plateau: interrupted by SIGTERM after 1 of 4 trials finished; resume with: plateau "
                          r"compare s\.yaml --data sample --epochs 1 \(the finished trials are reused\)")
    assert (study / "trials" / first / "summary.json").exists()
    assert sorted(p.name for p in (study / "trials").iterdir()) == [first]
    md = (study / "comparison.md").read_text().splitlines()
    assert md[0] == "# st (partial)"
    assert md[2].startswith("**Partial**: the study was interrupted by SIGTERM after 1 of 4 trials finished")
    assert (study / "comparison.csv").read_text().count("\n") == 2  # the header and the finished trial

    # The same study by `plateau run` reuses that trial; Ctrl-C (SIGINT to the whole group) after the next one
    driver, out, stderr, processes, seconds = _interrupt_when("run", tmp_path, "| study: 2/4 trials done",
                                                              signal.SIGINT, group=True)
    assert "st: 2 setting(s) x 2 seed(s), 1 worker(s) per trial, 1 already finished" in out, out
    assert re.search(r"\[1/4\] reduce_lr\.factor=0\.1  seed 7 .*\| study: 1/4 trials done", out), out
    _assert_ended_cleanly(driver, stderr, processes, seconds, EXIT_SIGINT,
                          r"plateau: interrupted by SIGINT after 2 of 4 trials finished; resume with: plateau "
                          r"run s\.yaml --data sample --epochs 1 \(the finished trials are reused\)")
    assert len(list((study / "trials").glob("*/summary.json"))) == 2
    assert (study / "comparison.md").read_text().startswith("# st (partial)\n\n**Partial**: the study was "
                                                             "interrupted by SIGINT after 2 of 4 trials finished")
