"""The lines a run prints: how it splits its batch, where its workers run, one line per epoch
with the callbacks' actions spelled out, and the last line of a finished run.

Example::

    echo(epoch_line(row, decision, max_epochs=30, pace="elapsed 12s  eta 1m"))
    echo(done_line(summary, out_dir))
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional

from service.report.records import DecisionRecord, HistoryRow
from service.report.summary import is_finite, non_finite_metrics
from service.spec import TrainSpec
from service.stopreason import StopReason, words_of


def workers_phrase(spec: TrainSpec) -> str:
    """How a run splits its global batch: `2 worker(s) x batch 100`, `3 workers sharing batch 200`,
    `1-2 workers sharing batch 200`."""
    scaling, batch = spec.scaling, spec.training.batch_size
    if scaling.elastic:
        return f"{scaling.min_workers}-{scaling.max_workers} workers sharing batch {batch}"
    if batch % spec.max_workers:
        return f"{spec.max_workers} workers sharing batch {batch}"
    return f"{spec.max_workers} worker(s) x batch {batch // spec.max_workers}"


def non_finite_words(values: Mapping[str, Optional[float]]) -> str | None:
    """`stopped: loss is inf` for the first metric of `values` (a history row, a decision's
    values) that is not finite; None when all are."""
    bad = non_finite_metrics(values)
    return f"stopped: {bad[0]} is {values[bad[0]]}" if bad else None


def stop_words(decision: DecisionRecord) -> str:
    """A decision's stop reason in words, naming the metric when one was not finite."""
    reason = decision.stop_reason
    if reason == StopReason.NON_FINITE:
        return non_finite_words(decision.values) or StopReason.NON_FINITE.words
    return words_of(reason, "early stop")


def epoch_line(row: HistoryRow, decision: DecisionRecord | None, max_epochs: int, pace: str = "",
               workers_before: int | None = None) -> str:
    """One terminal line per epoch, with the callbacks' actions spelled out; `pace` (elapsed time
    and ETA, `progress.Pace`) follows the epoch's seconds; a change in the number of workers (an
    elastic run) is said."""
    width = len(str(max_epochs))
    parts = [
        f"epoch {row.epoch:>{width}}/{max_epochs}",
        f"loss {row.loss:.4f}",
        f"accuracy {row.accuracy:.4f}",
        f"val_loss {row.val_loss:.4f}",
        f"val_accuracy {row.val_accuracy:.4f}",
        f"lr {row.lr:.3g}",
        f"{row.seconds:.1f}s",
    ]
    if pace:
        parts.append(pace)
    if workers_before is not None and row.workers not in (None, workers_before):
        parts.append(f"workers {workers_before} -> {row.workers}")
    if decision is not None and decision.reduced:
        parts.append(f"lr -> {decision.lr_after:.3g}")
    if decision is not None and decision.stop:
        parts.append(stop_words(decision))
    return "  ".join(parts)


def placement_line(placement: list[dict]) -> str:
    """Where each rank's worker runs: `workers: rank 0 on 10.0.0.5 (node 1a2b3c4d, CPU), ...`."""
    return "workers: " + ", ".join(f"rank {p['rank']} on {p['node_ip']} (node {p['node_id'][:8]}, {p['device']})"
                                   for p in placement)


def done_line(summary: dict, out_dir: Path) -> str:
    """The last line of a finished run."""
    reductions = [r["epoch"] for r in summary["lr_reductions"]] or "none"
    stopped = f" at epoch {summary['stop_epoch']}" if summary["stopped_early"] else ""
    why = words_of(summary.get("stop_reason"), "stopped") + stopped
    accuracy = summary["test_accuracy"]
    accuracy = f"{accuracy:.4f}" if is_finite(accuracy) else "n/a"
    return (f"done: {summary['epochs_run']} epochs ({why}), test accuracy {accuracy}, "
            f"lr reductions at {reductions} -> {out_dir}")
