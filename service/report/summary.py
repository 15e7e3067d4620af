"""summary.json: a run in one object, from its history rows and decision records (see
docs/outputs.md for each key), and the facts it is made of (the learning-rate reductions, the
stop reason, whether the ranks agreed, the resizes of an elastic run).

Example::

    summary = summarize(name=spec.name, data=sizes, max_workers=spec.max_workers, max_epochs=10,
                        history=history, decisions=decisions, test=test, wall_seconds=12.3)
    summary["stop_reason"], summary["lr_reductions"]
"""

from __future__ import annotations

import math
from typing import Mapping

from service.report.records import DecisionRecord, HistoryRow
from service.spec import METRICS
from service.stopreason import StopReason


def lr_reductions(decisions: list[DecisionRecord]) -> list[dict]:
    """[{epoch, lr}]: the epochs at whose end the learning rate went down, and the new rate."""
    return [{"epoch": d.epoch, "lr": d.lr_after} for d in decisions if d.rank == 0 and d.reduced]


def summarize(*, name: str, data: dict, max_workers: int, max_epochs: int, history: list[HistoryRow],
              decisions: list[DecisionRecord], test: dict, wall_seconds: float, placement: list[dict] = ()) -> dict:
    """summary.json: the run in one object (see the README for each key)."""
    rank0 = [d for d in decisions if d.rank == 0]
    stopped = bool(rank0 and rank0[-1].stop)
    finite = [r for r in history if is_finite(r.val_accuracy) and is_finite(r.val_loss)]
    best = max(finite, key=lambda r: r.val_accuracy) if finite else None
    final_lr = rank0[-1].lr_after if rank0 else None
    return {
        "name": name,
        "data": data,
        "workers": max_workers,
        "max_epochs": max_epochs,
        "epochs_run": len(history),
        "stopped_early": stopped,
        "stop_epoch": rank0[-1].epoch if stopped else None,
        "stop_reason": run_stop_reason(decisions, max_epochs),
        "best_epoch": best.epoch if best else None,
        "best_val_accuracy": best.val_accuracy if best else None,
        "best_val_loss": min(r.val_loss for r in finite) if finite else None,
        "test_loss": test.get("test_loss"),
        "test_accuracy": test.get("test_accuracy"),
        "test_error": (1.0 - test["test_accuracy"]) if test.get("test_accuracy") is not None else None,
        "lr_reductions": lr_reductions(decisions),
        "final_lr": final_lr,
        "ranks_agree": ranks_agree(decisions),
        "resizes": resizes(history),
        "replicas_identical": replicas_identical(decisions),
        "placement": list(placement),
        "wall_seconds": round(wall_seconds, 2),
    }


def resizes(history: list[HistoryRow]) -> list[dict]:
    """[{epoch, from, to}]: the first epoch an elastic run trained with another number of workers."""
    return [{"epoch": row.epoch, "from": before.workers, "to": row.workers}
            for before, row in zip(history, history[1:]) if row.workers != before.workers]


def is_finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def run_stop_reason(decisions: list[DecisionRecord], max_epochs: int) -> str | None:
    """Rank 0's reason on the last epoch; `max_epochs` when the run simply trained them all."""
    rank0 = [d for d in decisions if d.rank == 0]
    if not rank0:
        return None
    reason = rank0[-1].stop_reason
    if reason is None and not rank0[-1].stop and rank0[-1].epoch >= max_epochs:
        return StopReason.MAX_EPOCHS
    return reason


def non_finite_metrics(values: Mapping[str, float | None]) -> list[str]:
    """The metrics among `values` (a history row's, a decision record's) that are NaN or infinite
    (null in a file)."""
    return [k for k in METRICS if k in values and not is_finite(values[k])]


def replicas_identical(decisions: list[DecisionRecord]) -> bool | None:
    """True when the replica check found every rank's state identical at every epoch; None when
    it did not run (one worker, or switched off)."""
    checked = [d.replicas_identical for d in decisions]
    if not checked or any(c is None for c in checked):
        return None
    return all(checked)


def ranks_agree(decisions: list[DecisionRecord]) -> bool:
    """True when every rank saw the same values and took the same decision at every epoch."""
    by_epoch: dict[int, list[DecisionRecord]] = {}
    for d in decisions:
        by_epoch.setdefault(d.epoch, []).append(d)

    def decided(d: DecisionRecord) -> tuple:
        return d.values, d.lr_before, d.lr_after, d.reduced, d.stop, d.plateau_wait, d.stopping_wait

    return all(all(decided(d) == decided(rows[0]) for d in rows) for rows in by_epoch.values())
