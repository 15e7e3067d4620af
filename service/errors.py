"""Errors a user sees: the one base class for bad input, the exit codes, and how an error
becomes one line.

Every layer raises a subclass of `BadInput` (a spec, data, an address, a job server) for input
that is wrong before anything has started; the CLI catches `BadInput` once and exits 2 with its
message. Anything else that goes wrong is a failed run (exit 1).

Example::

    class DataError(BadInput): ...
    raise DataError("mnist.npz: missing y_test; expected a Keras-layout .npz")
"""

from __future__ import annotations

from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


class BadInput(ValueError):
    """Input that is wrong before anything started: one line saying what and how to fix it."""


def one_line(text: Any, limit: int = 300) -> str:
    """`text` with its white space folded into single spaces, cut to `limit` characters."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def first_line(exc: BaseException) -> str:
    """The first line of an error's message: where a library puts its summary."""
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


def cause_line(exc: BaseException) -> str:
    """`Type: last line` of an error's message: Ray wraps a remote error in a traceback whose
    last line is the cause."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    return one_line(f"{type(exc).__name__}: {lines[-1] if lines else ''}")
