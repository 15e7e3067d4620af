"""Keras callbacks of the worker loop that are not about synchronisation (that is `sync`):

* `ResumableReduceLROnPlateau`, `ResumableEarlyStopping`: the stock tf_keras callbacks, unchanged
  in what they decide, that can hand over their state to a checkpoint and take it back;
* `ReportEachEpoch`: every epoch's report to Ray Train (with the checkpoint) and to the driver;
* `FailOnce`, `PauseAfterEpoch`: drills, added only when a spec asks for them.

Example::

    reduce_lr = ResumableReduceLROnPlateau(monitor="val_accuracy", factor=0.1, patience=1)
    reduce_lr.load_state_dict(saved)   # applied right after Keras's reset in on_train_begin
    model.fit(..., callbacks=[..., reduce_lr, ...])
    reduce_lr.state_dict()             # {"best": 0.9375, "wait": 1, "cooldown_counter": 0}
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import tf_keras as keras

from service.messages import CHECK_SECONDS, EpochReport, Message
from service.stopreason import StopReason

if TYPE_CHECKING:  # sync imports this module
    from ray.util.queue import Queue

    from service.sync import DecisionCallbacks


# ---------------------------------------------------------------------------------------------
# The stock deciders, resumable


class _Resumable:
    """State a callback carries from epoch to epoch, saved and restored by name.

    Keras resets ReduceLROnPlateau and EarlyStopping in `on_train_begin`, so a run resumed from a
    checkpoint would forget its best value, its waits and its cooldown, and decide differently
    from the run that never stopped. State loaded before `fit` is applied right after that reset.
    """

    state_fields: tuple[str, ...] = ()
    _resume: Optional[dict[str, Any]] = None

    def state_dict(self) -> dict[str, Any]:
        # numpy scalars as plain numbers, so the state can go into JSON as it is
        return {name: _plain(getattr(self, name)) for name in self.state_fields}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._resume = {name: state[name] for name in self.state_fields if name in state}

    def on_train_begin(self, logs: dict | None = None):
        super().on_train_begin(logs)  # Keras's fresh-start reset
        for name, value in (self._resume or {}).items():
            setattr(self, name, value)


class ResumableReduceLROnPlateau(_Resumable, keras.callbacks.ReduceLROnPlateau):
    """tf_keras `ReduceLROnPlateau` whose `best`, `wait` and `cooldown_counter` survive a restart."""

    state_fields = ("best", "wait", "cooldown_counter")


class ResumableEarlyStopping(_Resumable, keras.callbacks.EarlyStopping):
    """tf_keras `EarlyStopping` whose `best`, `wait`, `best_epoch`, `stopped_epoch` and best
    weights survive a restart, and that says why it stopped (`stop_reason`, also kept).

    Stock EarlyStopping resets `wait` only when the value improves on its best AND beats
    `baseline`, and stops once `wait` reaches `patience`. The stop is `baseline`'s doing when
    the value did improve within the last `patience` epochs (without a baseline it would have
    gone on), else `patience`'s: no improvement for `patience` epochs.
    """

    state_fields = ("best", "wait", "best_epoch", "stopped_epoch", "best_weights", "stop_reason")
    stop_reason = None

    def on_train_begin(self, logs: dict | None = None):
        self.stop_reason = None
        super().on_train_begin(logs)  # Keras's reset, then the saved state (its reason included)

    def on_epoch_end(self, epoch: int, logs: dict | None = None):
        before = self.stopped_epoch
        super().on_epoch_end(epoch, logs)
        if self.stopped_epoch != before:  # it decided to stop at this epoch
            recent = epoch - self.best_epoch < self.patience
            self.stop_reason = StopReason.BASELINE if self.baseline is not None and recent else StopReason.PATIENCE


def _plain(value: Any):
    return value.item() if isinstance(value, np.generic) else value


# ---------------------------------------------------------------------------------------------
# Reporting


class DriverQueue:
    """The workers' line to the driver: each rank posts its reports, the driver prints them.

    Ray Train keeps only rank 0's metrics, and its in-process local mode runs no Ray Train
    callbacks, so the driver learns every rank's view from here.
    """

    def __init__(self, queue: Queue | None = None):
        self.queue = queue

    def post(self, rank: int, message: Message) -> None:
        if self.queue is not None:
            self.queue.put((rank, message))


class ReportEachEpoch(keras.callbacks.Callback):
    """Reports to Ray Train at every epoch's end, after the deciding callbacks.

    Every rank reports every epoch (the call is a barrier, so counts must match) with a
    checkpoint directory: rank 0 writes the weights and state, and every rank writes its own
    trace (its reports of every epoch so far); Ray Train merges them into one checkpoint, so
    the checkpoint a run resumes from carries the history up to it. Rank 0 also writes `former`
    traces, those of ranks an earlier, larger worker group had, so that no epoch's records are
    lost when an elastic run shrinks. Then the rank posts the same report to the driver.
    """

    def __init__(self, rank: int, deciders: DecisionCallbacks, driver: DriverQueue, trace: list[dict] | None = None, former: dict[int, list[dict]] | None = None):
        super().__init__()
        self.rank, self.deciders, self.driver = rank, deciders, driver
        self.trace = list(trace or [])
        self.former = dict(former or {})

    def on_epoch_end(self, epoch: int, logs: dict | None = None):
        import ray.train

        from service import checkpoint

        decision = self.deciders.consensus.last
        report = EpochReport(epoch=epoch + 1, seconds=self.deciders.metrics.seconds, lr=decision.lr_before,
                             values=decision.values, workers=decision.world_size, decision=decision.to_json(),
                             check_seconds=(logs or {}).get(CHECK_SECONDS))  # what the replica check cost
        metrics = report.metrics()
        self.trace.append(metrics)
        with tempfile.TemporaryDirectory() as tmp:
            for rank, trace in [*self.former.items(), (self.rank, self.trace)]:
                checkpoint.write_trace(tmp, rank, trace)
            if self.rank == 0:
                checkpoint.save(tmp, self.model, epoch + 1, self.deciders.state_dicts())
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        self.driver.post(self.rank, report)


# ---------------------------------------------------------------------------------------------
# Failure drills


class PauseAfterEpoch(keras.callbacks.Callback):
    """Waits `seconds` after every epoch's report: a drill's event (a node lost or added) then
    lands between two epochs. Place it after `ReportEachEpoch`."""

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds

    def on_epoch_end(self, epoch: int, logs: dict | None = None):
        time.sleep(self.seconds)


class FailOnce(keras.callbacks.Callback):
    """Hard-kills this worker's process at the end of `epoch` (1-based): a real crash, not an
    exception. Once per driver invocation (`attempt`): the restarted worker group passes that
    epoch again and must not die again. Place it after `ReportEachEpoch`.
    """

    def __init__(self, epoch: int, attempt: str, rank: int):
        super().__init__()
        self.epoch, self.attempt, self.rank = epoch, attempt, rank

    def on_epoch_end(self, epoch: int, logs: dict | None = None):
        if epoch + 1 != self.epoch:
            return
        marker = Path(tempfile.gettempdir(), f"plateau-fail-{self.attempt}-{self.epoch}-{self.rank}")
        if marker.exists():
            return
        marker.write_text("killed")
        os._exit(17)
