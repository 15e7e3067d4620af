"""What every rank does after deciding, whatever the engine: the per-epoch report to Ray Train
(with the checkpoint) and to the driver, and the failure drills. No TensorFlow, no Keras here.

Each engine declares these as classes on its Keras's own `Callback` (tf_keras's in
`service/engines/tf_keras/callbacks.py`), and hands `ReportEachEpoch` its way of writing a
checkpoint (`save(directory, model, epoch, callbacks_state)`: its `state.save`).

Example::

    class ReportEachEpoch(reporting.ReportEachEpoch, tf_keras.callbacks.Callback): ...
    ReportEachEpoch(rank, deciders, DriverQueue(queue), save=state.save)
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from service.core.messages import CHECK_SECONDS, EpochReport, Message, Placement

if TYPE_CHECKING:
    from ray.util.queue import Queue

    from service.core.deciding import DecisionCallbacks


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


def whereabouts(rank: int, device: str, workers: int) -> Placement:
    """Where this worker runs, as it tells the driver (summary.json's `placement`)."""
    import ray

    return Placement(rank=rank, node_id=ray.get_runtime_context().get_node_id(),
                     node_ip=ray.util.get_node_ip_address(), pid=os.getpid(), device=device, workers=workers)


class ReportEachEpoch:
    """Reports to Ray Train at every epoch's end, after the deciding callbacks.

    Every rank reports every epoch (the call is a barrier, so counts must match) with a
    checkpoint directory: rank 0 writes the weights and state, and every rank writes its own
    trace (its reports of every epoch so far); Ray Train merges them into one checkpoint, so
    the checkpoint a run resumes from carries the history up to it. Rank 0 also writes `former`
    traces, those of ranks an earlier, larger worker group had, so that no epoch's records are
    lost when an elastic run shrinks. Then the rank posts the same report to the driver.
    `save` writes the model's state (the engine's `state.save`). `ray_train=False`: the loop runs
    without Ray Train (`train.InProcess`): no report to it and no checkpoint, only the driver's.
    """

    def __init__(self, rank: int, deciders: DecisionCallbacks, driver: DriverQueue, trace: list[dict] | None = None,
                 former: dict[int, list[dict]] | None = None, *, save: Callable[..., None], ray_train: bool = True):
        super().__init__()
        self.rank, self.deciders, self.driver = rank, deciders, driver
        self.trace = list(trace or [])
        self.former = dict(former or {})
        self.save, self.ray_train = save, ray_train

    def on_epoch_end(self, epoch: int, logs: dict | None = None):
        import ray.train

        from service.checkpoints import layout

        decision = self.deciders.consensus.last
        report = EpochReport(epoch=epoch + 1, seconds=self.deciders.metrics.seconds, lr=decision.lr_before,
                             values=decision.values, workers=decision.world_size, decision=decision.to_json(),
                             check_seconds=(logs or {}).get(CHECK_SECONDS))  # what the replica check cost
        metrics = report.metrics()
        self.trace.append(metrics)
        if not self.ray_train:
            self.driver.post(self.rank, report)
            return
        with tempfile.TemporaryDirectory() as tmp:
            for rank, trace in [*self.former.items(), (self.rank, self.trace)]:
                layout.write_trace(tmp, rank, trace)
            if self.rank == 0:
                self.save(tmp, self.model, epoch + 1, self.deciders.state_dicts())
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        self.driver.post(self.rank, report)


# ---------------------------------------------------------------------------------------------
# Failure drills


class PauseAfterEpoch:
    """Waits `seconds` after every epoch's report: a drill's event (a node lost or added) then
    lands between two epochs. Place it after `ReportEachEpoch`."""

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds

    def on_epoch_end(self, epoch: int, logs: dict | None = None):
        time.sleep(self.seconds)


class FailOnce:
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


def drills(spec: Any, rank: int, attempt: str, kinds: Any) -> list:
    """The drills `spec.debug` asks of this rank, as `kinds`' classes (`.FailOnce`, `.PauseAfterEpoch`)."""
    found = []
    if spec.debug.fail_at_epoch is not None and rank == spec.debug.fail_rank:
        found.append(kinds.FailOnce(spec.debug.fail_at_epoch, attempt, rank))
    if spec.debug.epoch_pause_s:
        found.append(kinds.PauseAfterEpoch(spec.debug.epoch_pause_s))
    return found
