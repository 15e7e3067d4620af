"""Where a line for the user goes: progress to stdout, warnings and failures to stderr.

A run reports through one `echo(line)` callable (tests pass `list.append`); `say` is the one
the command line uses. A line is routed by what it is, so every part of the product sends
failures to the same place: `plateau: ...` (a failure or bad input) and `warning: ...` lines go
to stderr, everything else to stdout. Both are flushed at once, also into a pipe or a job log.

Example::

    say("epoch 1/5  loss 0.56 ...")          # stdout
    say("plateau: training failed on ...")    # stderr
"""

from __future__ import annotations

import sys

ERROR_PREFIXES = ("plateau: ", "warning: ", "WARNING: ")


def is_error_line(line: str) -> bool:
    """A failure, bad-input or warning line (stderr), not progress (stdout)."""
    return line.startswith(ERROR_PREFIXES)


def say(line: str) -> None:
    print(line, file=sys.stderr if is_error_line(line) else sys.stdout, flush=True)
