"""What a worker tells the driver: typed messages, posted on the run's progress queue.

Every message names its group's worker count `workers` (an elastic run's group changes size),
which is how the driver knows when every rank has sent an epoch. The same numbers go to Ray
Train's `ray.train.report` and into each checkpoint's traces as a flat dict (`metrics()`; Tune
and an older checkpoint read that), and an `EpochReport` is read back from one with
`EpochReport.from_metrics`.

Example::

    driver.post(rank, Placement(rank, node_id, node_ip, pid, "CPU", workers=2))
    collector.on_message(rank, EpochReport.from_metrics(trace[0]))
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Union

from service.spec import METRICS

# The key of what the replica check cost, in Keras's logs and in an epoch's metrics (`replicas`).
CHECK_SECONDS = "replica_check_seconds"
# An epoch's row of history.csv, in column order (`EpochReport.history_row`).
HISTORY_COLUMNS = ["epoch", *METRICS, "lr", "seconds", "workers"]


@dataclasses.dataclass
class Placement:
    """Where one rank's worker runs (summary.json's `placement` entry), sent once per group."""

    rank: int
    node_id: str
    node_ip: str
    pid: int
    device: str
    workers: int

    def where(self) -> dict[str, Any]:
        """summary.json's entry: everything but the group size."""
        return {"rank": self.rank, "node_id": self.node_id, "node_ip": self.node_ip, "pid": self.pid,
                "device": self.device}


@dataclasses.dataclass
class EpochReport:
    """One rank's end of one epoch: the global metrics, the rate it trained at, its decision record."""

    epoch: int  # 1-based
    seconds: float
    lr: float  # the rate the epoch trained at
    values: dict[str, float]  # the global metrics (METRICS)
    workers: int
    decision: dict[str, Any]  # `sync.Decision.to_json()`: one decisions.jsonl row
    check_seconds: Optional[float] = None  # what the replica check cost (None: it did not run)

    def metrics(self) -> dict[str, Any]:
        """The flat dict Ray Train's report and the checkpoint's trace hold (keys as always)."""
        flat = {"epoch": self.epoch, "seconds": self.seconds, "lr": self.lr, **self.values,
                "workers": self.workers, "decision": self.decision}
        if self.check_seconds is not None:
            flat[CHECK_SECONDS] = self.check_seconds
        return flat

    @classmethod
    def from_metrics(cls, flat: dict[str, Any]) -> "EpochReport":
        """An epoch report read back from a checkpoint's trace."""
        return cls(epoch=flat["epoch"], seconds=flat["seconds"], lr=flat["lr"],
                   values={k: flat[k] for k in METRICS if k in flat}, workers=flat["workers"],
                   decision=flat["decision"], check_seconds=flat.get(CHECK_SECONDS))

    def history_row(self) -> dict[str, Any]:
        """history.csv's row."""
        flat = self.metrics()
        return {k: flat[k] for k in HISTORY_COLUMNS}


@dataclasses.dataclass
class FinalReport:
    """One rank's test metrics of the final model; rank 0's also carries the model (.keras bytes)."""

    test_loss: float
    test_accuracy: float
    workers: int
    model_keras: Optional[bytes] = None

    def metrics(self) -> dict[str, Any]:
        """What Ray Train's last report holds (`final` marks it for Tune's callback)."""
        return {"final": True, "test_loss": self.test_loss, "test_accuracy": self.test_accuracy,
                "workers": self.workers}


Message = Union[Placement, EpochReport, FinalReport]
