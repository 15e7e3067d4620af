"""Fixtures: a temporary HOME and odd-sized real MNIST; the Ray clusters' fixtures from their
modules (`pytest_plugins`); `heavy` implies `slow`. Helpers live in tests/helpers.py."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from service import data as data_lib

# The real Ray clusters' fixtures (`ray_head`, `multinode_cluster`), for any test module that names them.
pytest_plugins = ["tests.ray_cluster", "tests.ray_head"]


@pytest.hookimpl(tryfirst=True)  # before `-m` selects: `-m "not slow"` must leave a heavy test out
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A heavy test is a slow one too: it needs only `@pytest.mark.heavy`."""
    for item in items:
        if item.get_closest_marker("heavy") is not None and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.slow)


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


@pytest.fixture(scope="session")
def odd_mnist(tmp_path_factory) -> Path:
    """Real MNIST cut to sizes that no worker count divides evenly.

    6007 training images -> holdout of 1001 (shards of 501 and 500 on two workers) and 5006
    to train; 999 test images. Uneven shards are where a mean of per-worker means goes wrong.
    """
    sample = data_lib.load("sample", "test")
    path = tmp_path_factory.mktemp("data") / "odd-mnist.npz"
    np.savez(
        path,
        x_train=sample.x_train[:6007].reshape(-1, 28, 28),
        y_train=sample.y_train[:6007],
        x_test=sample.x_test[:999].reshape(-1, 28, 28),
        y_test=sample.y_test[:999],
    )
    return path
