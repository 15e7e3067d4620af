"""The suite's own markers: a test marked only `heavy` is slow too (tests/conftest.py), so the
unit run (`-m "not slow"`) leaves it out; an undeclared marker is an error (--strict-markers)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
HEAVY_ONLY = "tests/test_jobs.py::test_submit_wait_succeeds_and_writes_the_summary"  # marked heavy, not slow


def collected(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    return subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
                          cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_a_heavy_test_is_slow_too():
    source = (PROJECT_ROOT / "tests/test_jobs.py").read_text()
    assert "@pytest.mark.heavy  # the same submission" in source and "pytestmark" not in source
    assert HEAVY_ONLY in collected("-m", "slow and heavy", "tests/test_jobs.py").stdout.splitlines()
    unit = collected("-m", "not slow", "tests/test_jobs.py")
    assert unit.returncode == 0 and HEAVY_ONLY not in unit.stdout.splitlines()
    assert "test_a_job_as_json" in unit.stdout  # the unit tests of that module are still there


def test_an_undeclared_marker_is_an_error(tmp_path):
    (tmp_path / "test_x.py").write_text("import pytest\n\n@pytest.mark.slwo\ndef test_x():\n    pass\n")
    done = collected("-c", str(PROJECT_ROOT / "pyproject.toml"), "--rootdir", str(PROJECT_ROOT), str(tmp_path))
    assert done.returncode != 0 and "'slwo' not found in `markers` configuration option" in done.stdout + done.stderr
