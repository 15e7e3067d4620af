"""The project's root, the `plateau` command as a user runs it, and the programs under
tests/support/programs/ that run in a process of their own.

Example::

    done = plateau("check", "jobs/seed-reduce-lr.yaml", cwd=PROJECT_ROOT)
    found = program_json("score_model", "tf_keras", "results/x/model.keras", "sample")
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support.limits import COMMAND_S, PROGRAM_S

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def python_env(**extra: str) -> dict:
    """This environment with the project first on the import path (the programs import `tests.support`)."""
    path = os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


def plateau(*args: str, cwd: Path = PROJECT_ROOT, timeout: float = COMMAND_S, env: dict | None = None,
            umask: int | None = None) -> subprocess.CompletedProcess:
    """`plateau ARGS` in `cwd`, as a user types it (under `umask`, if given)."""
    return subprocess.run([sys.executable, "-m", "service.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=env,
                          preexec_fn=(lambda: os.umask(umask)) if umask is not None else None)


def program(name: str, *args: str, cwd: Path = PROJECT_ROOT, timeout: float = PROGRAM_S,
            env: dict | None = None) -> subprocess.CompletedProcess:
    """Run tests/support/programs/NAME.py with `args` in a fresh Python process."""
    return subprocess.run([sys.executable, "-m", f"tests.support.programs.{name}", *args], cwd=cwd,
                          env=env if env is not None else python_env(), capture_output=True, text=True,
                          timeout=timeout)


def program_json(name: str, *args: str, **kwargs: object) -> dict:
    """The JSON a program prints after its `@@` marker (its last word), or the failure's stderr."""
    done = program(name, *args, **kwargs)
    assert "@@" in done.stdout, done.stderr[-3000:]
    return json.loads(done.stdout.rsplit("@@", 1)[1])


def say_json(value: object) -> None:
    """What a program ends with: `@@` and its result as JSON (TensorFlow's own lines may come before)."""
    print("@@" + json.dumps(value), flush=True)
