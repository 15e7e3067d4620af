"""Where a result came from: when it ran, on which versions, from which commit, by which command.

summary.json carries `provenance(started_at, command)`: `started_at` and `finished_at` (ISO
8601, UTC), `versions` of plateau and the stack it ran on (from the installed packages'
metadata), `git_commit` of the source tree plateau was imported from (with `-dirty` when it has
uncommitted changes; null when it is not a git checkout, e.g. a job's uploaded copy), and the
`command` line that started the run (null when the run did not come from the command line).

Example::

    started = utc_now()
    ...
    summary.update(provenance(started, "plateau train jobs/seed-reduce-lr.yaml --data sample"))
"""

from __future__ import annotations

import platform
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Optional

# The distributions a result depends on, by the key summary.json shows them under.
PACKAGES = {"plateau": "plateau", "ray": "ray", "tensorflow": "tensorflow", "tf_keras": "tf-keras"}
SOURCE_TREE = Path(__file__).resolve().parent.parent


def utc_now() -> str:
    """Now, as ISO 8601 in UTC to the second: 2026-11-27T13:37:38Z."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def versions(more: Optional[dict[str, str]] = None) -> dict[str, Optional[str]]:
    """{plateau, ray, tensorflow, tf_keras, python}: installed versions (null if not installed);
    `more` adds distributions by key (an engine's: keras, jax)."""
    found: dict[str, Optional[str]] = {}
    for key, dist in {**PACKAGES, **(more or {})}.items():
        try:
            found[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[key] = None
    found["python"] = platform.python_version()
    return found


def _git(tree: Path, *args: str) -> Optional[str]:
    try:
        done = subprocess.run(["git", "-C", str(tree), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_commit(tree: Path = SOURCE_TREE) -> Optional[str]:
    """HEAD of the checkout `tree` is (`-dirty` if `git status` lists changes); None otherwise."""
    if not (tree / ".git").exists():  # a directory, or a file in a worktree
        return None
    commit = _git(tree, "rev-parse", "HEAD")
    if not commit:
        return None
    status = _git(tree, "status", "--porcelain")
    return f"{commit}-dirty" if status else commit


def provenance(started_at: str, command: Optional[str], packages: Optional[dict[str, str]] = None) -> dict:
    """The summary.json fields that say where the result came from (`packages`: `versions`' `more`)."""
    return {"started_at": started_at, "finished_at": utc_now(), "versions": versions(packages),
            "git_commit": git_commit(), "command": command}
