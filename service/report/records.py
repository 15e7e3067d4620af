"""A run's epochs as the driver holds them: one `HistoryRow` per epoch, one `DecisionRecord` per
rank and epoch. Typed on this side; the files (`files`) and what a run returns hold their rows
as they always were, converted here at that boundary: history.csv's columns in their order
(`HistoryRow.to_row`), and each decision exactly as its worker sent it (`DecisionRecord.to_json`).

Example::

    row = HistoryRow.from_row(report.history_row())      # an EpochReport's row
    decision = DecisionRecord.from_json(report.decision)
    row.val_accuracy, decision.workers, decision.reduced
    write_history(out / "history.csv", [row.to_row()])
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

from service.core.messages import HISTORY_COLUMNS
from service.spec import METRICS


@dataclasses.dataclass(frozen=True)
class HistoryRow:
    """One epoch of history.csv. A column an older run did not write reads as None."""

    epoch: int
    loss: Optional[float]
    accuracy: Optional[float]
    val_loss: Optional[float]
    val_accuracy: Optional[float]
    lr: Optional[float]
    seconds: Optional[float]
    workers: Optional[int]  # how many workers trained the epoch (an elastic run's change)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> "HistoryRow":
        return cls(**{f.name: row.get(f.name) for f in dataclasses.fields(cls)})

    def to_row(self) -> dict[str, Any]:
        """history.csv's row: its columns, in order."""
        return {column: getattr(self, column) for column in HISTORY_COLUMNS}

    def metric(self, name: str) -> Optional[float]:
        """A metric by its name (`val_loss`): what a plot or a monitor names."""
        if name not in METRICS:
            raise KeyError(name)
        return getattr(self, name)

    def metrics(self) -> dict[str, Optional[float]]:
        return {name: getattr(self, name) for name in METRICS}


@dataclasses.dataclass(frozen=True)
class DecisionRecord:
    """What one rank decided at the end of one epoch (`deciding.Decision`): the fields the driver
    reads, and the record itself (`to_json`), written back unchanged. A field an older run did not
    record reads as None."""

    epoch: int
    rank: int
    workers: Optional[int]       # the record's world_size: how many workers trained the epoch
    values: Mapping[str, float]  # the global metrics every rank saw
    lr_before: float             # the rate the epoch trained at
    lr_after: float              # the rate from the next epoch on
    reduced: bool                # ReduceLROnPlateau lowered the rate
    stop: bool                   # the run ends at this epoch
    plateau_wait: Optional[int]  # the deciders' waits (None: not in the stack)
    stopping_wait: Optional[int]
    stop_reason: Optional[str]   # a StopReason's value when `stop`
    replicas_identical: Optional[bool]
    record: Mapping[str, Any] = dataclasses.field(repr=False, compare=False)

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> "DecisionRecord":
        return cls(epoch=record["epoch"], rank=record["rank"], workers=record.get("world_size"),
                   values=record["values"], lr_before=record["lr_before"], lr_after=record["lr_after"],
                   reduced=record["reduced"], stop=record["stop"], plateau_wait=record.get("plateau_wait"),
                   stopping_wait=record.get("stopping_wait"), stop_reason=record.get("stop_reason"),
                   replicas_identical=record.get("replicas_identical"), record=record)

    def to_json(self) -> dict[str, Any]:
        """decisions.jsonl's row: the record as its worker sent it, every key in its order."""
        return dict(self.record)
