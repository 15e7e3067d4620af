"""What a study writes and prints: comparison.csv rows, the ranked table (comparison.md and the
terminal), comparison.png, and the line printed per finished trial.

Example::

    write(study_dir / "comparison.csv", csv_text(rows, grid_fields))
    print(text_table(TABLE_HEADER, table_rows(records)))
"""

from __future__ import annotations

import csv
import io
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from service import report
from service.compare.grid import Setting, Trial
from service.errors import cause_line
from service.spec import CompareSpec


@dataclass
class TrialOutcome:
    """How one trial ended, as the study's tables need it."""

    status: str                      # ok | failed | stopped
    summary: Optional[dict] = None   # the run's summary.json, when ok
    error: str = ""                  # one line, when not ok
    history: list = field(default_factory=list)
    decisions: list = field(default_factory=list)
    reused: bool = False             # finished by an earlier run of the study: its folder is there

    @classmethod
    def from_tune(cls, metrics: Optional[dict], error: Optional[BaseException] = None) -> "TrialOutcome":
        """From what Tune kept of a trial: its last result, or the error that ended it."""
        metrics = metrics or {}
        if metrics.get("status") in ("ok", "failed"):
            error_line = "" if metrics["status"] == "ok" else (metrics.get("error") or "failed")
            return cls(metrics["status"], metrics.get("summary"), error_line, metrics.get("history") or [],
                       metrics.get("decisions") or [])
        if error is not None:
            return cls("failed", None, cause_line(error))
        # Ended without a final result: the scheduler (ASHA) stopped it, or the study was interrupted.
        epochs = metrics.get("training_iteration", 0)
        return cls("stopped", None, f"stopped after {epochs} epoch(s) (by the scheduler, or the study was interrupted)")


CSV_FIXED = ["trial", "setting"]
CSV_RESULTS = ["seed", "status", "error", "epochs_run", "stop_epoch", "best_epoch", "lr_reductions",
               "lr_reduction_epochs", "best_val_accuracy", "test_accuracy", "test_error", "wall_seconds"]


def _pm(mean: Optional[float], std: Optional[float], fmt: str, scale: float = 1.0, unit: str = "") -> str:
    if mean is None:
        return "–"
    text = f"{mean * scale:{fmt}}{unit}"
    return text if std is None else f"{text} ± {std * scale:{fmt}}{unit}"


TABLE_HEADER = ["rank", "setting", "seeds ok", "test accuracy", "test error", "best val_accuracy",
                "epochs run", "beats baseline"]


def table_rows(records: list[dict]) -> list[list[str]]:
    """The ranked table's cells, shared by comparison.md and the terminal."""
    rows = []
    for r in records:
        beats = "baseline" if r["baseline"] else f"{r['beats']}/{r['compared']}"
        rows.append([
            str(r["rank"]), r["setting"], f"{r['n_ok']}/{r['n']}",
            _pm(r["test_accuracy_mean"], r["test_accuracy_std"], ".4f"),
            _pm(r["test_error_mean"], r["test_error_std"], ".2f", 100.0, "%"),
            _pm(r["best_val_accuracy_mean"], r["best_val_accuracy_std"], ".4f"),
            _pm(r["epochs_run_mean"], r["epochs_run_std"], ".1f"),
            beats,
        ])
    return rows


def text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(c) for c in col) for col in zip(header, *rows)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(header, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


def markdown(spec: CompareSpec, records: list[dict], rows: list[dict], settings: list[Setting],
             trials: Optional[list[Trial]] = None) -> str:
    baseline = settings[0].label if settings else "base"
    specs = [t.spec for t in trials] if trials else [spec.base]

    def distinct(get) -> str:
        return " / ".join(str(v) for v in dict.fromkeys(get(s) for s in specs))

    lines = [
        f"# {spec.name}",
        "",
        f"Base spec `{spec.base.name}`; trials ran {distinct(lambda s: s.workers)} worker(s), "
        f"up to {distinct(lambda s: s.training.epochs)} epochs, data `{distinct(lambda s: s.data.source)}`, "
        f"validation on {distinct(lambda s: s.data.validation)}. "
        f"{len(settings)} setting(s) x {len(spec.seeds)} seed(s) ({', '.join(map(str, spec.seeds))}).",
        "",
        "Ranked by mean test accuracy of the final model over the seeds that finished. "
        "`±` is the sample standard deviation over seeds (none for a single seed). "
        f"The baseline is the grid's first setting, `{baseline}`; \"beats baseline\" counts the "
        "seeds on which a setting's test accuracy is higher than the baseline's with the same seed.",
        "",
        "| " + " | ".join(TABLE_HEADER) + " |",
        "|" + "|".join(["---:", "---", "---:", "---:", "---:", "---:", "---:", "---:"]) + "|",
    ]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in table_rows(records)]
    bad = [r for r in rows if r["status"] != "ok"]
    if bad:
        lines += ["", "Trials that did not finish:", ""]
        lines += [f"- `{r['trial']}` ({r['setting']}, seed {r['seed']}): {r['status']}"
                  f"{': ' + r['error'] if r['error'] else ''}" for r in bad]
    return "\n".join(lines) + "\n"


def trial_row(trial: Trial, outcome: TrialOutcome) -> dict:
    """comparison.csv's row of one trial."""
    s = outcome.summary or {}
    reductions = s.get("lr_reductions") or []
    return {
        "trial": trial.name,
        "setting": trial.setting.label,
        **trial.setting.columns,
        "seed": trial.seed,
        "status": outcome.status,
        "error": outcome.error or "",
        "epochs_run": s.get("epochs_run"),
        "stop_epoch": s.get("stop_epoch"),
        "best_epoch": s.get("best_epoch"),
        "lr_reductions": len(reductions) if outcome.summary else None,
        "lr_reduction_epochs": " ".join(str(r["epoch"]) for r in reductions),
        "best_val_accuracy": s.get("best_val_accuracy"),
        "test_accuracy": s.get("test_accuracy"),
        "test_error": s.get("test_error"),
        "wall_seconds": s.get("wall_seconds"),
    }


def csv_text(rows: list[dict], grid_fields: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIXED + grid_fields + CSV_RESULTS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buf.getvalue()


def _band(histories: list[list[dict]], key: str):
    """Per epoch: the mean and min/max over the runs that reached it."""
    epochs = sorted({r["epoch"] for h in histories for r in h})
    mean, lo, hi = [], [], []
    for e in epochs:
        vals = [r[key] for h in histories for r in h if r["epoch"] == e and r.get(key) is not None]
        mean.append(statistics.fmean(vals))
        lo.append(min(vals))
        hi.append(max(vals))
    return epochs, mean, lo, hi


def plot_comparison(path: Path, curves: dict[str, list[list[dict]]], title: str = "") -> None:
    """val_accuracy per epoch: per setting the mean over its seeds as a line and the min–max over
    seeds as a band (later epochs: the seeds that got there); below, each seed's learning rate
    (log axis) in its setting's colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (ax_acc, ax_lr) = plt.subplots(2, 1, figsize=(8, 7), sharex=True, height_ratios=[2, 1])
    cmap = plt.get_cmap("tab10" if len(curves) <= 10 else "tab20")
    log_ok = True
    for i, (label, histories) in enumerate(curves.items()):
        histories = [h for h in histories if h]
        if not histories:
            continue
        color = cmap(i % cmap.N)
        n = len(histories)
        epochs, mean, lo, hi = _band(histories, "val_accuracy")
        ax_acc.plot(epochs, mean, marker="o", ms=3, color=color, label=f"{label} (n={n})")
        ax_acc.fill_between(epochs, lo, hi, color=color, alpha=0.15, lw=0)
        # One schedule per seed: a mean of learning rates that differ by factors of ten (and
        # over fewer seeds once some have stopped) would draw a schedule no run followed.
        for history in histories:
            lrs = [r["lr"] for r in history]
            log_ok = log_ok and min(lrs) > 0
            ax_lr.step([r["epoch"] for r in history], lrs, where="mid", color=color, alpha=0.7, lw=1)
    ax_acc.set_ylabel("val_accuracy (mean, min–max band)")
    ax_acc.grid(alpha=0.3)
    if any(curves.values()):
        ax_acc.legend(loc="lower right", fontsize="small" if len(curves) <= 6 else "x-small")
    if log_ok:
        ax_lr.set_yscale("log")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("epoch")
    ax_lr.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_lr.grid(alpha=0.3, which="both")
    if title:
        ax_acc.set_title(title)
    report.save_figure(path, fig)


def live_line(done: int, total: int, trial: Trial, outcome: TrialOutcome) -> str:
    """The line printed when a trial ends: `[k/N] setting  seed S  epochs E  stop ...`."""
    head = f"[{done:>{len(str(total))}}/{total}] {trial.setting.label}  seed {trial.seed}"
    if outcome.status != "ok":
        return f"{head}  {outcome.status.upper()}: {outcome.error}"
    s = outcome.summary or {}
    stop = s.get("stop_epoch") if s.get("stopped_early") else "-"
    acc = s.get("test_accuracy")
    line = f"{head}  epochs {s.get('epochs_run')}  stop {stop}"
    if acc is not None:
        line += f"  test_accuracy {acc:.4f}"
    return f"{line}  {s.get('wall_seconds') or 0:.1f}s"
