"""The suite's markers, enforced (a pytest plugin, registered by tests/conftest.py).

- `slow`: the test starts Ray (a run, a study, a cluster) or trains in processes of its own. The
  unit run (`-m "not slow"`) leaves it out.
- `quick`: a slow test that the default run keeps: the one real run of each layer.
- `heavy`: the costliest multi-run cases; heavy implies slow (added here, so `-m "not slow"`
  leaves a test marked only `heavy` out).

The default run (`python -m pytest -q`, pyproject's addopts) is `-m "not slow or quick"`; CI's
whole suite is `-m ""`.

A test that starts Ray without `slow` fails: every Ray started in this pytest run, in this process
or in a command it runs, puts its session folder in one temporary folder (Ray's RAY_TMPDIR and
TMPDIR), and a test not marked `slow` must leave no new session there.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest



def _short_temp() -> Path:
    """A new folder for Ray's sessions, its path short: Ray's socket paths under it must stay
    within AF_UNIX's 107 bytes. A pytest run inside a test's makes its own beside the outer one's."""
    base = Path(tempfile.gettempdir())
    if base.name.startswith("plateau-tests-"):
        base = base.parent
    return Path(tempfile.mkdtemp(prefix="plateau-tests-", dir=base))


# Made once, before any test: Ray's session folders of this run land under RAY_TEMP/ray/.
RAY_TEMP = _short_temp()
_BEFORE = pytest.StashKey[frozenset]()


def pytest_configure(config: pytest.Config) -> None:
    # Both: a command run with RAY_* variables dropped still keeps TMPDIR, and Ray reads either.
    os.environ["RAY_TMPDIR"] = os.environ["TMPDIR"] = str(RAY_TEMP)


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(RAY_TEMP, ignore_errors=True)


@pytest.hookimpl(tryfirst=True)  # before `-m` selects: `-m "not slow"` must leave a heavy test out
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A heavy test is a slow one too: it needs only `@pytest.mark.heavy`."""
    for item in items:
        if item.get_closest_marker("heavy") is not None and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.slow)


def ray_sessions() -> frozenset[str]:
    """The Ray sessions started in this pytest run so far (their folder names)."""
    return frozenset(p.name for p in (RAY_TEMP / "ray").glob("session_2*"))


def _refuse_unmarked_ray(item: pytest.Item) -> None:
    if item.get_closest_marker("slow") is not None:
        return
    started = ray_sessions() - item.stash.get(_BEFORE, frozenset())
    if started:
        pytest.fail(f"{item.nodeid} started Ray ({len(started)} session(s)) but is not marked slow: add "
                    "@pytest.mark.slow (and @pytest.mark.quick if the default run should keep it)", pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item):
    item.stash[_BEFORE] = ray_sessions()
    result = yield
    _refuse_unmarked_ray(item)  # a fixture that starts Ray counts as the test's
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    result = yield
    _refuse_unmarked_ray(item)
    return result
