"""The suite's own markers (tests/support/markers.py): what each run selects, `heavy` implies
`slow`, an undeclared marker is an error, and a test that starts Ray without `slow` fails."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.limits import COMMAND_S, RUN_S
from tests.support.project import PROJECT_ROOT, python_env

HEAVY_ONLY = "tests/test_jobs.py::test_submit_wait_succeeds_and_writes_the_summary"  # marked heavy, not slow
QUICK = "tests/test_jobs.py::test_a_submitted_study_trains_every_trial_and_writes_its_tables"  # slow and quick


def collected(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
                          cwd=PROJECT_ROOT, env=python_env(), capture_output=True, text=True, timeout=COMMAND_S)


def test_a_heavy_test_is_slow_too():
    source = (PROJECT_ROOT / "tests/test_jobs.py").read_text()
    assert "@pytest.mark.heavy  # the same submission" in source and "pytestmark" not in source
    assert HEAVY_ONLY in collected("-m", "slow and heavy", "tests/test_jobs.py").stdout.splitlines()
    unit = collected("-m", "not slow", "tests/test_jobs.py")
    assert unit.returncode == 0 and HEAVY_ONLY not in unit.stdout.splitlines()
    assert "test_a_job_as_json" in unit.stdout  # the unit tests of that module are still there
    assert QUICK not in unit.stdout.splitlines()


def test_the_default_run_is_the_unit_tests_and_the_quick_real_runs():
    default = collected("tests/test_jobs.py").stdout.splitlines()
    assert "tests/test_jobs.py::test_a_job_as_json" in default  # a unit test
    assert QUICK in default
    assert "tests/test_jobs.py::test_stop_a_running_job" not in default  # slow only
    assert HEAVY_ONLY not in default


def test_an_undeclared_marker_is_an_error(tmp_path):
    (tmp_path / "test_x.py").write_text("import pytest\n\n@pytest.mark.slwo\ndef test_x():\n    pass\n")
    done = collected("-c", str(PROJECT_ROOT / "pyproject.toml"), "--rootdir", str(PROJECT_ROOT), str(tmp_path))
    assert done.returncode != 0 and "'slwo' not found in `markers` configuration option" in done.stdout + done.stderr


STARTS_RAY = '''
import logging

import pytest
import ray


def start_and_stop_ray():
    ray.init(num_cpus=1, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    ray.shutdown()


def test_unmarked_starts_ray():
    start_and_stop_ray()


@pytest.mark.slow
def test_marked_starts_ray():
    start_and_stop_ray()


def test_unmarked_without_ray():
    pass
'''


@pytest.mark.slow  # it starts Ray twice, in a pytest run of its own
def test_a_test_that_starts_ray_without_the_slow_marker_fails(tmp_path):
    (tmp_path / "test_ray.py").write_text(STARTS_RAY)
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "", "-p", "no:cacheprovider",
                           "-p", "tests.support.markers", "-c", str(PROJECT_ROOT / "pyproject.toml"),
                           "--rootdir", str(tmp_path), str(tmp_path / "test_ray.py")],
                          cwd=tmp_path, env=python_env(), capture_output=True, text=True, timeout=RUN_S)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert "1 failed, 2 passed" in out, out
    assert ("test_ray.py::test_unmarked_starts_ray started Ray (1 session(s)) but is not marked slow: "
            "add @pytest.mark.slow") in out, out
    assert "FAILED test_ray.py::test_unmarked_starts_ray" in out and "test_marked_starts_ray FAILED" not in out
