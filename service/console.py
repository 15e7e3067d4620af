"""Where a line for the user goes (progress to stdout, warnings and failures to stderr), and the
aligned text table every listing prints (`text_table`).

A run reports through one `echo(line)` callable (tests pass `list.append`); `say` is the one
the command line uses. A line is routed by what it is, so every part of the product sends
failures to the same place: `plateau: ...` (a failure or bad input) and `warning: ...` lines go
to stderr, everything else to stdout. Both are flushed at once, also into a pipe or a job log.

Example::

    say("epoch 1/5  loss 0.56 ...")          # stdout
    say("plateau: training failed on ...")    # stderr
    print(text_table(["NAME", "STATUS"], [["seed", "finished"]]))
"""

from __future__ import annotations

import sys
from typing import Sequence

ERROR_PREFIXES = ("plateau: ", "warning: ", "WARNING: ")


def is_error_line(line: str) -> bool:
    """A failure, bad-input or warning line (stderr), not progress (stdout)."""
    return line.startswith(ERROR_PREFIXES)


def say(line: str) -> None:
    print(line, file=sys.stderr if is_error_line(line) else sys.stdout, flush=True)


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns two spaces apart, each as wide as its widest cell; no trailing blanks."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in [header, *rows])
