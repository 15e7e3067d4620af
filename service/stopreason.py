"""Why a run ends: the `stop_reason` of summary.json and of the last epoch's decision record.

One definition for every module that sets, compares or words a stop reason. The members are
strings, so a file holds the same JSON text as before the enum (`"patience"`), and a reason
read back from a file compares equal to its member (`"patience" == StopReason.PATIENCE`).

Example::

    StopReason("patience").words   # 'early stop: no improvement for early_stopping.patience epochs'
"""

from __future__ import annotations

import enum


class StopReason(str, enum.Enum):
    MAX_EPOCHS = "max_epochs"    # trained training.epochs
    PATIENCE = "patience"        # EarlyStopping: no improvement for its patience
    BASELINE = "baseline"        # EarlyStopping: improved, but never past its baseline
    NON_FINITE = "non_finite"    # a global metric is NaN or infinite
    CONSENSUS = "consensus"      # another rank decided to stop

    # Formatted and printed as its value ('patience'), as the plain strings it replaces were.
    __str__ = str.__str__
    __format__ = str.__format__

    @property
    def words(self) -> str:
        """The reason as a line says it."""
        return _WORDS[self]


_WORDS = {
    StopReason.MAX_EPOCHS: "reached training.epochs",
    StopReason.PATIENCE: "early stop: no improvement for early_stopping.patience epochs",
    StopReason.BASELINE: "early stop: did not beat early_stopping.baseline within its patience",
    StopReason.NON_FINITE: "stopped: a metric is not finite",
    StopReason.CONSENSUS: "stopped: another rank decided to stop",
}


def words_of(reason: str | None, otherwise: str) -> str:
    """A stored reason in words; `otherwise` for none, or one this version does not know."""
    try:
        return StopReason(reason).words
    except ValueError:
        return otherwise
