"""Aggregates of a study: one record per setting over its seeds (pure; unit tested on
handcrafted rows).

Each record also carries `paired`: the setting against the baseline over the seeds both
finished (`stats.paired` on test accuracy; None for the baseline itself).

Example::

    records = aggregate(rows, order=[s.label for s in settings])
    records[0].setting, records[0].test_accuracy_mean, records[0].beats
    records[0].paired.diff_mean, records[0].paired.resolved()
"""

from __future__ import annotations

import dataclasses
import statistics
from typing import Any, Optional

from service.compare import stats


@dataclasses.dataclass(frozen=True)
class SettingRecord:
    """One setting over its seeds (settings.csv's row, the ranked table's line). A `*_sd` is the
    sample standard deviation over the seeds that finished (None for fewer than two)."""

    setting: str           # the setting's label
    position: int          # in grid order (0: the baseline)
    baseline: bool
    n: int = 0             # trials
    n_ok: int = 0          # trials that finished
    test_accuracy_mean: Optional[float] = None
    test_accuracy_sd: Optional[float] = None
    test_error_mean: Optional[float] = None
    test_error_sd: Optional[float] = None
    best_val_accuracy_mean: Optional[float] = None
    best_val_accuracy_sd: Optional[float] = None
    epochs_run_mean: Optional[float] = None
    epochs_run_sd: Optional[float] = None
    beats: int = 0         # seeds where it beat the baseline's same seed
    compared: int = 0      # seeds where both finished
    paired: Optional[stats.PairedComparison] = None   # None for the baseline
    rank: int = 0          # by mean test accuracy, 1 first

    def mean_sd(self, result: str) -> tuple[Optional[float], Optional[float]]:
        """A result's (`test_accuracy`, `epochs_run`, ...) mean and sd."""
        return getattr(self, f"{result}_mean"), getattr(self, f"{result}_sd")


def _mean_sd(values: list[float]) -> tuple[Optional[float], Optional[float]]:
    """Mean and sample standard deviation (n - 1); the sd is None for fewer than two values."""
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def aggregate(rows: list[dict], order: Optional[list[str]] = None) -> list[SettingRecord]:
    """One record per setting, ranked by mean test accuracy (settings with no finished trial last).

    rows: comparison rows (setting, seed, status, test_accuracy, test_error, best_val_accuracy,
    epochs_run). The baseline is the first setting of `order` (default: first seen in rows);
    `beats` counts the seeds on which the setting's test accuracy is strictly higher than the
    baseline's for the same seed, out of `compared` seeds where both finished; `paired` holds
    the paired statistics over those seeds (None for the baseline).
    """
    order = list(order or dict.fromkeys(r["setting"] for r in rows))
    baseline = order[0] if order else None
    by_setting = {s: [r for r in rows if r["setting"] == s] for s in order}
    base_acc = {r["seed"]: r["test_accuracy"] for r in by_setting.get(baseline, []) if r["status"] == "ok"}
    out = []
    for position, s in enumerate(order):
        ok = [r for r in by_setting[s] if r["status"] == "ok"]
        results: dict[str, Any] = {}
        for key in ("test_accuracy", "test_error", "best_val_accuracy", "epochs_run"):
            results[f"{key}_mean"], results[f"{key}_sd"] = _mean_sd([float(r[key]) for r in ok if r[key] is not None])
        pairs = [(r["test_accuracy"], base_acc[r["seed"]]) for r in ok if r["seed"] in base_acc]
        mine = {r["seed"]: r["test_accuracy"] for r in ok}
        out.append(SettingRecord(setting=s, position=position, baseline=s == baseline, n=len(by_setting[s]),
                                 n_ok=len(ok), **results, beats=sum(1 for a, b in pairs if a > b),
                                 compared=len(pairs), paired=None if s == baseline else stats.paired(mine, base_acc)))
    ranked = sorted(out, key=lambda r: (r.test_accuracy_mean is None, -(r.test_accuracy_mean or 0.0), r.position))
    return [dataclasses.replace(rec, rank=rank) for rank, rec in enumerate(ranked, 1)]
