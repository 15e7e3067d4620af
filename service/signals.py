"""Ctrl-C and SIGTERM: a run ends cleanly, with exit 130 or 143, instead of a traceback or a
page of native stack lines.

`interruptible()` is what the command line wraps a run in: inside it, the first SIGINT or
SIGTERM raises `Interrupted` in the main thread, so the run's `finally` blocks shut down the Ray
it started and the CLI prints one line; a second signal ends the process at once. Libraries
replace handlers as they start: `ray.init` installs a native failure handler for SIGTERM that
prints stack lines and aborts. `take_over()` puts ours back; the driver calls it once Ray is up.
Outside `interruptible()` (a test, a Tune trial) nothing here touches the process's handlers.

Example::

    with interruptible():
        run()                  # `kill PID` -> Interrupted(SIGTERM) raised here
    # except Interrupted as exc: print(exc.message); sys.exit(exc.exit_code)
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from types import FrameType
from typing import Iterator

HANDLED = (signal.SIGINT, signal.SIGTERM)
EXIT_SIGINT = 128 + signal.SIGINT    # 130, as a shell reports a process ended by Ctrl-C
EXIT_SIGTERM = 128 + signal.SIGTERM  # 143

_active = False
_received: list[int] = []


class Interrupted(BaseException):
    """The run was asked to stop by a signal. A BaseException, like KeyboardInterrupt, so that
    no `except Exception` on the way up mistakes it for a failure of the run."""

    def __init__(self, signum: int, message: str = ""):
        super().__init__(signum)
        self.signum = signum
        self.message = message or f"interrupted ({self.name})"

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _handler(signum: int, frame: FrameType | None) -> None:
    if _received:  # asked again while cleaning up: go now
        os._exit(128 + signum)
    _received.append(signum)
    raise Interrupted(signum)


def received() -> int | None:
    """The signal `interruptible()` received, if any. A signal that lands while Ray's compiled
    code runs (a `ray.wait` inside Tune) can surface as another error (a SystemError "returned a
    result with an exception set") instead of `Interrupted`: a caller that catches errors asks
    this first."""
    return _received[0] if _active and _received else None


def take_over() -> None:
    """(Re)install our handlers, inside `interruptible()` and on the main thread only."""
    if _active and threading.current_thread() is threading.main_thread():
        for signum in HANDLED:
            signal.signal(signum, _handler)


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """SIGINT and SIGTERM raise `Interrupted` in the block; the default handlers after it."""
    global _active
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _active = True
    _received.clear()
    take_over()
    try:
        yield
    finally:
        _active = False
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
