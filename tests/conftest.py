"""Fixtures: a temporary HOME and odd-sized real MNIST (helpers live in tests/helpers.py)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from service import data as data_lib


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
