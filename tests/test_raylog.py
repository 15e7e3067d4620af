"""Ray's own lines stay out of the user's view: `ray.log` in the run's folder, stdout only with
--verbose, never colour codes into a pipe, and plateau's own line for a lost node.

The first tests hand Ray's real printing path (`ray._private.worker.print_to_stdstream`, what the
driver's threads call for the cluster's messages and the workers' output) the message Ray 2.60's
GCS sends when it gives up on a node; the last ones train for real. A node really lost is in
tests/test_multinode.py (heavy).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import ray._private.worker as ray_worker

from service import raylog
from service.raylog import RayLines
from tests.support.limits import LONG_RUN_S

PROJECT_ROOT = Path(__file__).resolve().parents[1]
NODE = "cdddfba7a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718"
MARKED_DEAD = (f"\x1b[33mThe node with node id: {NODE} and address: 10.0.0.7 and node name: 10.0.0.7 has been "
               "marked dead because the detector has missed too many heartbeats from it. This can happen when a "
               "\t(1) raylet crashes unexpectedly (OOM, etc.) \n\t(2) raylet has lagging heartbeats due to slow "
               "network or busy workload.\x1b[0m")


def raylet_says(message: str) -> None:
    """What Ray's error-message thread does with a message for the job."""
    ray_worker.print_to_stdstream({"lines": [message], "pid": "raylet", "is_err": False}, ignore_prefix=False)


def test_a_lost_node_is_one_plateau_line_and_ray_text_goes_to_the_log(tmp_path, capsys):
    said: list[str] = []
    with RayLines(tmp_path / "run" / "ray.log", verbose=False, echo=said.append):
        raylet_says(MARKED_DEAD)
        ray_worker.print_to_stdstream({"lines": ["step 3 done"], "pid": 4242, "actor_name": "RayTrainWorker",
                                       "is_err": True}, ignore_prefix=False)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""
    assert said == ["node cdddfba7 lost (missed heartbeats)"]
    log = (tmp_path / "run" / "ray.log").read_text()
    assert "\x1b" not in log
    assert f"(raylet) The node with node id: {NODE} and address" in log
    assert "(RayTrainWorker pid=4242) step 3 done" in log
    assert ray_worker.print_worker_logs is not None and ray_worker.print_worker_logs.__module__ == ray_worker.__name__


def test_verbose_shows_ray_text_without_colour_in_a_pipe(tmp_path, capsys):
    said: list[str] = []
    other = "0f1e2d3c" + NODE[8:]
    with RayLines(tmp_path / "ray.log", verbose=True, echo=said.append):
        # What print_to_stdstream hands on (called directly: it leaves out a line like one it
        # printed moments ago, and the test above printed one).
        ray_worker.print_worker_logs({"lines": [MARKED_DEAD.replace(NODE, other)], "pid": "raylet"}, sys.stdout)
    out = capsys.readouterr().out   # captured: not a terminal
    assert out.startswith(f"(raylet) The node with node id: {other} ")
    assert "\x1b" not in out
    assert said == ["node 0f1e2d3c lost (missed heartbeats)"]


def test_other_messages_are_no_node_line():
    assert raylog.node_lost_line("2 PYTHON worker processes have been started on node: abc with address: x") is None
    assert raylog.node_lost_line(f"The node with node id: {NODE} has been marked dead because it was drained") == \
        "node cdddfba7 lost (it was drained)"


@pytest.mark.slow
@pytest.mark.parametrize("verbose", [False, True], ids=["quiet", "verbose"])
def test_a_real_run_keeps_ray_lines_in_ray_log(tmp_path, verbose):
    argv = [sys.executable, "-m", "service.cli", "train", "jobs/seed-reduce-lr.yaml", "--data", "sample",
            "--workers", "1", "--epochs", "1", "--name", "lines", "--output", str(tmp_path),
            *(["--verbose"] if verbose else [])]
    proc = subprocess.run(argv, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=LONG_RUN_S)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    log = (tmp_path / "lines" / "ray.log").read_text()
    assert "(TrainController pid=" in log and "\x1b" not in log
    ray_text = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("(")]
    assert bool(ray_text) == verbose, ray_text[:5]
    assert "\x1b" not in proc.stdout + proc.stderr
