"""Writing a file whole: to a temporary name beside it, then renamed into place, so a crash never
leaves a torn file behind (a reader sees the previous version or the new one). The lowest layer:
the worker-to-driver protocol, checkpoints, the run lock and the driver's output files all use it.

Files get the permissions of any other new file (0666 less the umask), as open() makes them.

Example::

    write_atomic(out / "summary.json", text)       # str or bytes; missing folders are made
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def write_atomic(path: Path, text: str | bytes) -> None:
    """Write `text` to `path` whole (see the module's docstring)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    # 0o666 and the umask, as open() does; mkstemp would make every file 0600.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode() if isinstance(text, str) else text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
