"""Aggregates of a study: one record per setting over its seeds (pure; unit tested on
handcrafted rows).

Each record also carries `paired`: the setting against the baseline over the seeds both
finished (`stats.paired` on test accuracy; None for the baseline itself).

Example::

    records = aggregate(rows, order=[s.label for s in settings])
    records[0]["setting"], records[0]["test_accuracy_mean"], records[0]["beats"]
    records[0]["paired"].diff_mean, records[0]["paired"].resolved()
"""

from __future__ import annotations

import statistics
from typing import Any, Optional

from service.compare import stats


def _mean_std(values: list[float]) -> tuple[Optional[float], Optional[float]]:
    """Mean and sample standard deviation (n - 1); std is None for fewer than two values."""
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def aggregate(rows: list[dict], order: Optional[list[str]] = None) -> list[dict]:
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
        rec: dict[str, Any] = {"setting": s, "position": position, "n": len(by_setting[s]), "n_ok": len(ok),
                               "baseline": s == baseline}
        for key in ("test_accuracy", "test_error", "best_val_accuracy", "epochs_run"):
            rec[f"{key}_mean"], rec[f"{key}_std"] = _mean_std([float(r[key]) for r in ok if r[key] is not None])
        pairs = [(r["test_accuracy"], base_acc[r["seed"]]) for r in ok if r["seed"] in base_acc]
        rec["beats"] = sum(1 for mine, theirs in pairs if mine > theirs)
        rec["compared"] = len(pairs)
        mine = {r["seed"]: r["test_accuracy"] for r in ok}
        rec["paired"] = None if s == baseline else stats.paired(mine, base_acc)
        out.append(rec)
    ranked = sorted(out, key=lambda r: (r["test_accuracy_mean"] is None, -(r["test_accuracy_mean"] or 0.0),
                                        r["position"]))
    for rank, rec in enumerate(ranked, 1):
        rec["rank"] = rank
    return ranked

