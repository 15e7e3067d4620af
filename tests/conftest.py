"""The suite's plugins (tests/support/): the markers and their enforcement, and the fixtures
(real Ray clusters, odd-sized MNIST, one Ray per module); a temporary HOME for every test.

Helpers live in tests/support/; no test module imports another.
"""

from __future__ import annotations

import os

import pytest

pytest_plugins = ["tests.support.markers", "tests.support.fixtures"]


@pytest.fixture(scope="session", autouse=True)
def _private_home(tmp_path_factory):
    """Ray 2.60 writes an auth token under ~/.ray: keep tests out of the user's home."""
    home = tmp_path_factory.mktemp("home")
    old = os.environ.get("HOME")
    os.environ["HOME"] = str(home)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    yield home
    if old is not None:
        os.environ["HOME"] = old
