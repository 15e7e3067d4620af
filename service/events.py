"""TensorBoard event files of a run, written by the driver with tensorboardX.

A train run writes OUTPUT/NAME/tensorboard/ as its epochs arrive at the driver (flushed every
epoch, so a running TensorBoard shows progress); a study writes each trial's under
OUTPUT/STUDY/trials/TRIAL/tensorboard/ from the history the trial returned, so
`tensorboard --logdir OUTPUT/STUDY` shows every trial side by side. The step is the epoch
(from 1, as history.csv counts). Scalars:

* `loss`, `accuracy`: the training metrics averaged over the ranks; `val_loss`, `val_accuracy`:
  the exact global validation metrics the callbacks decided on;
* `lr`: the learning rate the epoch trained with;
* `decisions/lr_reduced`: 1 at an epoch whose end lowered the rate, else 0; `decisions/lr_after`:
  the rate after the epoch's decisions; `decisions/stop`: 1 at the epoch EarlyStopping ended the
  run; `decisions/plateau_wait`, `decisions/stopping_wait`: the callbacks' wait counters;
* `test/loss`, `test/accuracy`: the final model on the test set, at the last epoch.

A resumed run starts a new event file with `purge_step` at its first new epoch, so TensorBoard
hides what the interrupted attempt wrote past its checkpoint.

Example::

    writer = RunEvents(out_dir / "tensorboard")
    writer.epoch(history_row, decision)       # every epoch
    writer.test({"test_loss": 0.2, "test_accuracy": 0.95}, last_epoch)
    write_history(out_dir / "tensorboard", history, decisions, summary)   # all at once
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Optional

FOLDER = "tensorboard"
METRIC_TAGS = ("loss", "accuracy", "val_loss", "val_accuracy", "lr")


class RunEvents:
    """One run's event writer, opened at the first epoch it is given."""

    def __init__(self, logdir: Path):
        self.logdir = Path(logdir)
        self._writer = None

    def _open(self, first_step: int):
        if self._writer is None:
            from tensorboardX import SummaryWriter

            self.logdir.mkdir(parents=True, exist_ok=True)
            # A unique suffix: two writers opened in the same second would share tensorboardX's file name.
            self._writer = SummaryWriter(str(self.logdir), purge_step=first_step if first_step > 1 else None,
                                         flush_secs=5, filename_suffix=f".{uuid.uuid4().hex[:8]}")
        return self._writer

    def epoch(self, row: dict, decision: Optional[dict], flush: bool = True) -> None:
        """One epoch's metrics and decisions (`decision`: rank 0's record, or None)."""
        step = int(row["epoch"])
        writer = self._open(step)
        for tag in METRIC_TAGS:
            if row.get(tag) is not None:
                writer.add_scalar(tag, float(row[tag]), step)
        if decision is not None:
            writer.add_scalar("decisions/lr_reduced", float(bool(decision.get("reduced"))), step)
            writer.add_scalar("decisions/lr_after", float(decision["lr_after"]), step)
            writer.add_scalar("decisions/stop", float(bool(decision.get("stop"))), step)
            for wait in ("plateau_wait", "stopping_wait"):
                if decision.get(wait) is not None:
                    writer.add_scalar(f"decisions/{wait}", float(decision[wait]), step)
        if flush:
            writer.flush()

    def test(self, test: dict, step: int) -> None:
        """The final test metrics, at the last epoch; closes the writer."""
        writer = self._open(max(step, 1))
        for key in ("test_loss", "test_accuracy"):
            if test.get(key) is not None:
                writer.add_scalar(key.replace("test_", "test/"), float(test[key]), max(step, 1))
        self.close()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def write_history(logdir: Path, history: list[dict], decisions: list[dict], summary: Optional[dict]) -> None:
    """A finished (or failed) run's events in one go, from its files' contents (replacing any
    events already there)."""
    shutil.rmtree(logdir, ignore_errors=True)
    rank0 = {d["epoch"]: d for d in decisions if d.get("rank", 0) == 0}
    writer = RunEvents(logdir)
    for row in history:
        writer.epoch(row, rank0.get(row["epoch"]), flush=False)
    if summary is not None and history:
        writer.test(summary, history[-1]["epoch"])
    writer.close()
