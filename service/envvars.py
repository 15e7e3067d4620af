"""Environment variables for one block of code: set there, and put back as they were after it, so
that a command's settings never outlive it in a process that goes on (a test, a notebook, a
study's driver running trial after trial).

Example::

    with environment(RAY_DEDUP_LOGS="1"):      # unless the user set it; unset again after
        ...
    with restored("MLFLOW_HTTP_REQUEST_TIMEOUT"):
        os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "10"   # gone again after the block
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, Optional


@contextlib.contextmanager
def restored(*names: str) -> Iterator[None]:
    """The variables `names` as they were before the block, after it, whatever it set."""
    saved = {name: os.environ.get(name) for name in names}
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def environment(**values: Optional[str]) -> Iterator[None]:
    """Set `values` for the block, each unless the user set it (None: leave it); restore after."""
    with restored(*values):
        for name, value in values.items():
            if value is not None and name not in os.environ:
                os.environ[name] = value
        yield
