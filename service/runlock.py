"""One writer per run folder: the lock a run or a study holds on OUTPUT/NAME/ for its whole life.

Two commands training into one folder would interleave their files and share one Ray Train
storage folder. So a run (and a study) first creates `OUTPUT/NAME/lock.json` with O_CREAT |
O_EXCL, which only one process can do, and removes it when it ends, however it ends (finished,
failed, bad input, Ctrl-C, SIGTERM). The file says who holds the folder:

    {"host": "gpu-box", "pid": 4242, "pid_started": 81723, "started": "2026-11-27T13:51:19Z",
     "command": "plateau train jobs/seed.yaml", "heartbeat": "2026-11-27T13:53:49Z"}

and a daemon thread refreshes `heartbeat` every `HEARTBEAT_S`. A second command for the same
folder is refused at once (`RunLocked`, exit 2) with one line naming the holder, unless the
holder is gone: on the same host, its pid is dead (or is now another process: `pid_started` is
the process's start time, where /proc tells it); on another host (shared storage), its
heartbeat is older than `STALE_AFTER_S`. A gone holder's lock is taken over, with a warning
line saying whose it was. The lock also covers what is under the folder: a run aimed at a
folder inside a held one (a study's trial folder while the study runs) is refused the same way.

`clear(folder)` empties a held folder but for its lock (what `--fresh` does). `holder(folder)`
reads a folder's live holder, for `plateau runs`. No Ray, no TensorFlow.

Example::

    with hold(Path("results/seed"), "plateau train jobs/seed.yaml", echo=print):
        ...   # RunLocked: results/seed is in use by pid 4242 on gpu-box since ...; wait for it ...
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import socket
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

from service import rundir
from service.errors import BadInput
from service.files import write_atomic

LOCK_FILE = "lock.json"
HEARTBEAT_S = 30.0
# A holder on another host whose heartbeat is older than this is gone (4 missed heartbeats,
# with room for clocks that disagree by a minute).
STALE_AFTER_S = 120.0
# A lock file that does not parse yet is one being written; after this long it is damaged.
UNREADABLE_GRACE_S = 10.0
# How often, and how far apart, a command looks again at a lock being written or taken over.
ACQUIRE_TRIES, ACQUIRE_PAUSE_S = 40, 0.05
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"

Echo = Callable[[str], None]


class RunLocked(BadInput):
    """Another live command holds the folder (exit 2, before anything starts)."""


# ---------------------------------------------------------------------------------------------
# Who holds a folder


def _stamp(when: float) -> str:
    return datetime.fromtimestamp(when, timezone.utc).strftime(TIME_FORMAT)


def _seconds(stamp: str) -> float:
    return datetime.strptime(stamp, TIME_FORMAT).replace(tzinfo=timezone.utc).timestamp()


def process_started(pid: int) -> Optional[int]:
    """When process `pid` started, in clock ticks since boot (Linux /proc); None where unknown."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        return int(text[text.rindex(")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def pid_alive(pid: int) -> bool:
    if pid <= 0:  # 0 and -1 would name process groups, not a process
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


@dataclasses.dataclass
class Holder:
    """What a lock file says about the command that holds the folder."""

    host: str
    pid: int
    started: str
    heartbeat: str
    command: Optional[str] = None
    pid_started: Optional[int] = None
    id: str = ""

    @classmethod
    def me(cls, command: Optional[str], now: float) -> "Holder":
        pid = os.getpid()
        return cls(socket.gethostname(), pid, _stamp(now), _stamp(now), command, process_started(pid),
                   uuid.uuid4().hex)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"

    def words(self) -> str:
        """'pid 4242 on gpu-box since 2026-11-27T13:51:19Z (plateau train ...)'."""
        return f"pid {self.pid} on {self.host} since {self.started}" + (f" ({self.command})" if self.command else "")

    def gone_because(self, now: float) -> Optional[str]:
        """Why the holder is gone, in words; None while it holds the folder."""
        if self.host == socket.gethostname():
            if not pid_alive(self.pid):
                return "its process is gone"
            current = process_started(self.pid)
            if self.pid_started is not None and current is not None and current != self.pid_started:
                return "its pid is another process now"
            return None
        age = now - _seconds(self.heartbeat)
        if age > STALE_AFTER_S:
            return f"its last heartbeat is {age:.0f}s old (more than {STALE_AFTER_S:.0f}s)"
        return None


def _read(path: Path) -> Optional[Holder]:
    """The holder a lock file names; None when it does not parse (being written, or damaged)."""
    try:
        data = json.loads(path.read_text())
        fields = {f.name for f in dataclasses.fields(Holder)}
        holder = Holder(**{k: v for k, v in data.items() if k in fields})
        _seconds(holder.heartbeat)
        return holder if isinstance(holder.pid, int) else None
    except (ValueError, TypeError, AttributeError):
        return None


def holder(folder: Path, now: Optional[float] = None) -> Optional[Holder]:
    """The live holder of `folder`, or None (no lock, or its holder is gone)."""
    now = time.time() if now is None else now
    try:
        found = _read(Path(folder) / LOCK_FILE)
    except OSError:
        return None
    return found if found is not None and found.gone_because(now) is None else None


# ---------------------------------------------------------------------------------------------
# Taking and giving back


def _in_use(folder: Path, by: Holder, inside: Optional[Path] = None) -> RunLocked:
    where = f"{folder} is in use by" if inside is None else f"{inside} is inside {folder}, which is in use by"
    return RunLocked(f"{where} {by.words()}; wait for it to end, or use --name to run under another name")


def check_free(folder: Path, also: Sequence[str] = ()) -> None:
    """Raise RunLocked if a live command holds `folder`, a folder above it, or one of the
    folders under it that the globs `also` name (a study's `trials/*`)."""
    folder = Path(folder)
    now = time.time()
    for above in folder.absolute().parents:
        found = holder(above, now)
        if found is not None:
            raise _in_use(above, found, inside=folder)
    for pattern in ("", *also):
        for inner in ([folder] if not pattern else sorted(folder.glob(pattern))):
            found = holder(inner, now)
            if found is not None:
                raise _in_use(inner, found)


def _create(path: Path, me: Holder) -> bool:
    """Create the lock file, only if there is none: True when it is ours."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(me.to_json())
    return True


def _take_over(path: Path, stale: Optional[Holder], why: str, echo: Echo) -> None:
    """Move a gone holder's lock (None: an unreadable one) out of the way; of several commands
    racing for it, one does."""
    aside = path.with_name(f".{LOCK_FILE}.{uuid.uuid4().hex[:12]}.gone")
    try:
        os.rename(path, aside)
    except FileNotFoundError:  # another command took it over first
        return
    if _read(aside) != stale:  # a new holder's lock, created after we looked: give it back
        with contextlib.suppress(OSError):
            os.link(aside, path)
    else:
        echo(f"warning: took over {path}{f' from {stale.words()}' if stale else ''}: {why}")
    aside.unlink(missing_ok=True)


def _why_gone(path: Path, found: Optional[Holder], now: float) -> Optional[str]:
    """Why the lock at `path` may be taken over; None while its holder holds it."""
    if found is not None:
        return found.gone_because(now)
    if now - path.stat().st_mtime < UNREADABLE_GRACE_S:  # being written
        return None
    return f"it has been unreadable for more than {UNREADABLE_GRACE_S:.0f}s"


def _acquire(folder: Path, me: Holder, echo: Echo) -> None:
    path = folder / LOCK_FILE
    for _ in range(ACQUIRE_TRIES):
        if _create(path, me):
            return
        try:
            found = _read(path)
            why = _why_gone(path, found, time.time())
        except FileNotFoundError:  # its holder just let go
            continue
        if why is None and found is None:  # created a moment ago, its holder still writing it
            time.sleep(ACQUIRE_PAUSE_S)
        elif why is None:
            raise _in_use(folder, found)
        else:
            _take_over(path, found, why, echo)
    raise RunLocked(f"{folder} is being taken by another command; wait for it to end, or use --name to run under "
                    f"another name")


class Lock:
    """A held folder: its heartbeat thread runs until `release`."""

    def __init__(self, folder: Path, me: Holder, created: Sequence[Path] = (), heartbeat_s: float = HEARTBEAT_S):
        self.folder, self.me, self.created = folder, me, list(created)  # folders made for it, innermost first
        self.path = folder / LOCK_FILE
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(heartbeat_s,), name="plateau-lock", daemon=True)
        self._thread.start()

    def ours(self) -> bool:
        try:
            found = _read(self.path)
        except OSError:  # gone: removed by hand, or moved aside by a command that took it over
            return False
        return found is not None and found.id == self.me.id

    def _beat(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            if not self.ours():  # taken over by someone who thought us gone: nothing of ours to refresh
                return
            self.me.heartbeat = _stamp(time.time())
            with contextlib.suppress(OSError):
                write_atomic(self.path, self.me.to_json())

    def release(self) -> None:
        """Stop the heartbeat and remove the lock (if it is still ours); folders made for the
        lock that nothing else was written to go too."""
        self._stop.set()
        self._thread.join(timeout=5)
        with contextlib.suppress(OSError):
            if self.ours():
                self.path.unlink()
            for made in self.created:
                if any(made.iterdir()):
                    break
                made.rmdir()


@contextlib.contextmanager
def hold(folder: Path, command: Optional[str], echo: Echo, also: Sequence[str] = (),
         heartbeat_s: float = HEARTBEAT_S) -> Iterator[Lock]:
    """Hold `folder` for the block: refuse (RunLocked) while a live command holds it, a folder
    above it or one under it that `also` names; take over a lock whose holder is gone."""
    folder = Path(folder)
    check_free(folder, also)
    created = [f for f in (folder, *folder.absolute().parents) if not f.exists()]
    rundir.check_writable(folder)
    me = Holder.me(command, time.time())
    _acquire(folder, me, echo)
    lock = Lock(folder, me, created, heartbeat_s)
    try:
        yield lock
    finally:
        lock.release()


def clear(folder: Path) -> None:
    """Remove everything in a held folder but its lock (`--fresh`)."""
    try:
        for entry in Path(folder).iterdir():
            if entry.name == LOCK_FILE:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    except OSError as exc:
        raise rundir.RunFolderError(f"--fresh: cannot remove {folder} ({exc.strerror or exc})") from None
