"""Progress on the terminal: elapsed time and ETAs, the start-up line, and `--quiet`.

Pure bookkeeping with an injectable clock, so the arithmetic is unit-tested with a fake one:

* `Pace`: a train run's "elapsed 1m05s  eta 40s" on each epoch line. The ETA is to the
  spec's `epochs` (early stopping may end the run sooner) at the median pace of the last few
  epochs, measured between epoch lines on the driver (so checkpoints and reports count).
* `StudyPace`: a study's ETA from its finished trials and its concurrency.
* `Startup`: a line while Ray and the workers start, then one every `interval_s` with the
  seconds waited, from a background thread until `done()`.
* `QuietEcho`: `--quiet`: only warnings, errors (lines starting `plateau:`) and what is sent to
  its `final` / `error` methods get through; use `final(echo, line)` / `error(echo, line)` to
  send a line there (plain echo functions print it as usual).

Example::

    pace = Pace(epochs=30)
    pace.tick(epoch=1, seconds=2.0)    # 'elapsed 21s  eta 58s'
"""

from __future__ import annotations

import statistics
import threading
import time
from typing import Callable, Optional

from service.console import is_error_line

Echo = Callable[[str], None]
Clock = Callable[[], float]
RECENT = 5  # epochs whose median pace the ETA uses
BUSY_HINT_S = 30.0  # a start-up this long says the workers' resources may be taken


def duration(seconds: float) -> str:
    """12s, 3m05s, 1h02m: whole seconds up to an hour, minutes after."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class Pace:
    """Elapsed time since the run started and the ETA to the last epoch."""

    def __init__(self, epochs: int, clock: Clock = time.monotonic):
        self.epochs, self.clock = epochs, clock
        self.started = clock()
        self._last: Optional[tuple[int, float]] = None  # (epoch, when its line was printed)
        self._per_epoch: list[float] = []

    def seconds_per_epoch(self, seconds: float) -> float:
        """The median of the recent epoch gaps; before there is a gap, the epoch's own seconds."""
        return statistics.median(self._per_epoch[-RECENT:]) if self._per_epoch else seconds

    def tick(self, epoch: int, seconds: float, last: bool = False) -> str:
        """'elapsed E  eta T' for the epoch that just ended (`last`: the run ends here, no ETA)."""
        now = self.clock()
        if self._last is not None and epoch > self._last[0]:
            self._per_epoch.append((now - self._last[1]) / (epoch - self._last[0]))
        self._last = (epoch, now)
        text = f"elapsed {duration(now - self.started)}"
        if last or epoch >= self.epochs:
            return text
        return f"{text}  eta {duration((self.epochs - epoch) * self.seconds_per_epoch(seconds))}"


class StudyPace:
    """A study's elapsed time and ETA: the mean wall time of its finished trials, spread over
    `concurrency` trials at a time, minus what the running trials have already done."""

    def __init__(self, total: int, concurrency: int, clock: Clock = time.monotonic):
        self.total, self.concurrency, self.clock = total, max(1, concurrency), clock
        self.started = clock()
        self.finished: list[float] = []          # wall seconds of each trial trained here
        self.running: dict[str, float] = {}      # trial -> when it started
        self.done = 0                            # finished trials, reused ones included

    def start(self, trial: str) -> None:
        self.running.setdefault(trial, self.clock())

    def finish(self, trial: str, reused: bool = False) -> None:
        began = self.running.pop(trial, None)
        self.done += 1
        if began is not None and not reused:
            self.finished.append(self.clock() - began)

    def eta(self) -> Optional[float]:
        """Seconds left, or None before any trial finished here."""
        if not self.finished:
            return None
        mean = statistics.fmean(self.finished)
        now = self.clock()
        left = (self.total - self.done) * mean - sum(min(now - t, mean) for t in self.running.values())
        return max(0.0, left) / min(self.concurrency, max(1, self.total - self.done))

    def line(self) -> str:
        """'3/6 trials done, 1 running, elapsed 7m12s, eta 10m48s'."""
        eta = self.eta()
        text = f"{self.done}/{self.total} trials done"
        if self.running:
            text += f", {len(self.running)} running"
        text += f", elapsed {duration(self.clock() - self.started)}"
        if self.done < self.total and eta is not None:
            text += f", eta {duration(eta)}"
        elif self.done < self.total and self.running:
            text += ", eta after the first trial"
        return text


class Startup:
    """'starting Ray and 2 worker(s)' now, then 'still starting ...: 10s' every `interval_s`
    until `done()` (from a daemon thread; `done()` is idempotent)."""

    def __init__(self, echo: Echo, what: str, interval_s: float = 10.0, clock: Clock = time.monotonic):
        self.echo, self.what, self.interval_s, self.clock = echo, what, interval_s, clock
        self.started = clock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def line(self) -> str:
        waited = self.clock() - self.started
        hint = " (are the workers' resources busy?)" if waited >= BUSY_HINT_S else ""
        return f"still {self.what}: {duration(waited)}{hint}"

    def begin(self) -> "Startup":
        self.echo(f"{self.what} ...")
        self._thread = threading.Thread(target=self._run, name="plateau-startup", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.echo(self.line())

    def done(self) -> None:
        self._stop.set()

    def __enter__(self) -> "Startup":
        return self.begin()

    def __exit__(self, *exc) -> None:
        self.done()


class QuietEcho:
    """`--quiet`: drops progress lines; keeps warnings, errors and the final summary."""

    def __init__(self, echo: Echo = print):
        self.echo = echo

    def __call__(self, line: str) -> None:
        if is_error_line(line):
            self.echo(line)

    def final(self, line: str) -> None:
        self.echo(line)

    error = final


def final(echo: Echo, line: str) -> None:
    """Say a line of the final summary (kept by --quiet)."""
    getattr(echo, "final", echo)(line)


def error(echo: Echo, line: str) -> None:
    """Say an error line (kept by --quiet)."""
    getattr(echo, "error", echo)(line)
