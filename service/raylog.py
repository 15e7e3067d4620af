"""Ray's own lines, kept out of the user's view: `ray.log` in the run's folder, the terminal only
with --verbose, and plateau's own line for what the user must know (a node lost).

A driver of Ray prints two kinds of text that are Ray's, not plateau's: what its workers and
actors write (`(RayTrainWorker pid=123) ...`), and the cluster's messages to the job
(`(raylet) The node with node id: cdddfba7... has been marked dead because the detector has
missed too many heartbeats from it. ...`), in colour. `RayLines` sends both to a log file, with
no colour codes; on stdout only with --verbose (coloured only when stdout is a terminal).

Ray prints both through one function of its driver (`service/compat/ray.py`: `print_worker_logs`)
(no public hook routes the cluster's messages; `log_to_driver` only covers the workers'), so
the session replaces that function while it lasts and puts Ray's back afterwards.

Example::

    with RayLines(run_dir / "ray.log", verbose=False, echo=say):
        ray.init(log_to_driver=True)
        ...   # a lost node prints: node cdddfba7 lost (missed heartbeats)
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional, TextIO

from service.compat import ray as compat_ray

LOG_FILE = "ray.log"

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# The GCS's words when it gives up on a node (Ray 2.60: "The node with node id: ID and address: IP
# and node name: NAME has been marked dead because the detector has missed too many heartbeats").
NODE_DEAD = re.compile(r"node with node id: ([0-9a-f]+)\b.*? has been marked dead because (?:the detector has )?"
                       r"(missed too many heartbeats|[^.]*)", re.S)


def plain(text: str) -> str:
    """`text` without terminal colour codes."""
    return ANSI.sub("", text)


def source_of(data: dict) -> str:
    """Who wrote a batch of lines, as Ray names it: `raylet`, or `RayTrainWorker pid=123, ip=...`."""
    pid = data.get("pid")
    if pid in ("raylet", "autoscaler"):
        return str(pid)
    who = data.get("actor_name") or data.get("task_name") or ""
    ip = data.get("ip")
    where = "" if not ip or ip == data.get("localhost") else f", ip={ip}"
    return f"{who + ' ' if who else ''}pid={pid}{where}"


def node_lost_line(message: str) -> Optional[str]:
    """plateau's line for the cluster's message that a node is dead, else None."""
    found = NODE_DEAD.search(plain(message))
    if found is None:
        return None
    why = "missed heartbeats" if "heartbeat" in found.group(2) else found.group(2).strip()
    return f"node {found.group(1)[:8]} lost ({why})"


class RayLines:
    """For the life of a Ray session: Ray's lines to `path` (appended, one `[time] (source) line`
    per line), to stdout too with `verbose`, and `node ... lost` through `echo`."""

    def __init__(self, path: Optional[Path], verbose: bool, echo: Callable[[str], None]):
        self.path, self.verbose, self.echo = path, verbose, echo
        self._file: Optional[TextIO] = None
        self._lock = threading.Lock()   # Ray prints from its own threads
        self._ray_printer: Optional[Callable] = None
        self._autoscaler_events: Callable = iter

    # -- the session

    def __enter__(self) -> "RayLines":
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")
        self._ray_printer = compat_ray.log_printer()
        self._autoscaler_events = compat_ray.autoscaler_events()
        compat_ray.set_log_printer(self.on_lines)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if compat_ray.log_printer() == self.on_lines:
            compat_ray.set_log_printer(self._ray_printer)
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    # -- a batch of Ray's lines

    def on_lines(self, data: dict, print_file: Any, ignore_prefix: bool = False) -> None:
        """Ray's `print_worker_logs(data, print_file, ignore_prefix)`, routed."""
        lines = [line for line in data.get("lines", []) if line]
        if data.get("pid") == "autoscaler":   # its periodic status tables: only the events, as Ray prints
            lines = list(self._autoscaler_events(lines))
        source = source_of(data)
        self.keep(source, lines)
        if self.verbose:
            self.show(data, print_file, ignore_prefix, source, lines)
        if data.get("pid") == "raylet":
            for line in lines:
                said = node_lost_line(line)
                if said:
                    self.echo(said)

    def keep(self, source: str, lines: list[str]) -> None:
        with self._lock:
            if self._file is None:
                return
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            for line in lines:
                self._file.write(f"[{stamp}] ({source}) {plain(line)}\n")
            self._file.flush()

    def show(self, data: dict, print_file: Any, ignore_prefix: bool, source: str, lines: list[str]) -> None:
        """--verbose: Ray's own printing on a terminal (its colours), plain text anywhere else."""
        if getattr(print_file, "isatty", lambda: False)() and self._ray_printer is not None:
            self._ray_printer(data, print_file, ignore_prefix)
            return
        for line in lines:
            print(plain(line) if ignore_prefix else f"({source}) {plain(line)}", file=print_file, flush=True)
