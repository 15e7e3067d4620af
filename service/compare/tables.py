"""What a study writes and prints: comparison.csv rows, settings.csv (one row per setting with
its paired statistics against the baseline), the ranked table (comparison.md and the terminal),
comparison.png, and the line printed per finished trial.

Example::

    write(study_dir / "comparison.csv", csv_text(rows, grid_fields))
    print(console.text_table(TABLE_HEADER, table_rows(records)))
"""

from __future__ import annotations

import csv
import io
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

from service.compare import stats
from service.compare.aggregate import SettingRecord
from service.grid import Setting, Trial
from service.errors import cause_line
from service.report.plots import save_figure
from service.spec import CompareSpec, TrainSpec

if TYPE_CHECKING:  # matplotlib is imported only when a figure is drawn
    from matplotlib.axes import Axes


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


def _pm(mean_sd: tuple[Optional[float], Optional[float]], fmt: str, scale: float = 1.0, unit: str = "") -> str:
    mean, sd = mean_sd
    if mean is None:
        return "–"
    text = f"{mean * scale:{fmt}}{unit}"
    return text if sd is None else f"{text} ± {sd * scale:{fmt}}{unit}"


TABLE_HEADER = ["rank", "setting", "seeds ok", "test accuracy", "test error", "best val_accuracy",
                "epochs run", "beats baseline", "diff vs baseline", "95% CI", "p", "seeds needed"]
TABLE_ALIGN = ["---:", "---", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---", "---:", "---:"]


def _signed(value: Optional[float]) -> str:
    return "–" if value is None else f"{value:+.4f}"


def _p(value: Optional[float]) -> str:
    return "–" if value is None else f"{value:.3g}"


def paired_cells(paired: Optional[stats.PairedComparison]) -> list[str]:
    """diff vs baseline, 95% CI, p, seeds needed: the paired statistics' cells ("–" when undefined)."""
    if paired is None:  # the baseline
        return ["", "", "", ""]
    ci = ("–" if paired.diff_ci_low is None else
          f"[{_signed(paired.diff_ci_low)}, {_signed(paired.diff_ci_high)}]")
    needed = "–" if paired.seeds_needed is None else str(paired.seeds_needed)
    return [_signed(paired.diff_mean), ci, _p(paired.p_value), needed]


def table_rows(records: list[SettingRecord]) -> list[list[str]]:
    """The ranked table's cells, shared by comparison.md and the terminal."""
    rows = []
    for r in records:
        beats = "baseline" if r.baseline else f"{r.beats}/{r.compared}"
        rows.append([
            str(r.rank), r.setting, f"{r.n_ok}/{r.n}",
            _pm(r.mean_sd("test_accuracy"), ".4f"),
            _pm(r.mean_sd("test_error"), ".2f", 100.0, "%"),
            _pm(r.mean_sd("best_val_accuracy"), ".4f"),
            _pm(r.mean_sd("epochs_run"), ".1f"),
            beats,
            *paired_cells(r.paired),
        ])
    return rows


def markdown(spec: CompareSpec, records: list[SettingRecord], rows: list[dict], settings: list[Setting],
             trials: Optional[list[Trial]] = None, how_it_ran: str = "") -> str:
    """comparison.md: the ranked table, a verdict per setting against the baseline, and
    `how_it_ran` (what sequential seeding concluded, when it ran; how the trials were run)."""
    baseline = settings[0].label if settings else "base"
    specs = [t.spec for t in trials] if trials else [spec.base]
    seeds = list(dict.fromkeys(t.seed for t in trials)) if trials else list(spec.seeds)

    def distinct(get: Callable[[TrainSpec], object]) -> str:
        return " / ".join(str(v) for v in dict.fromkeys(get(s) for s in specs))

    lines = [
        f"# {spec.name}",
        "",
        f"Base spec `{spec.base.name}`; trials ran {distinct(lambda s: s.max_workers)} worker(s), "
        f"up to {distinct(lambda s: s.training.epochs)} epochs, data `{distinct(lambda s: s.data.source)}`, "
        f"validation on {distinct(lambda s: s.data.validation)}. "
        f"{len(settings)} setting(s) x {len(seeds)} seed(s) ({', '.join(map(str, seeds))}).",
        "",
        "Ranked by mean test accuracy of the final model over the seeds that finished. "
        "`±` is the sample standard deviation over seeds (none for a single seed). "
        f"The baseline is the grid's first setting, `{baseline}`; \"beats baseline\" counts the "
        "seeds on which a setting's test accuracy is higher than the baseline's with the same seed.",
        "",
        "| " + " | ".join(TABLE_HEADER) + " |",
        "|" + "|".join(TABLE_ALIGN) + "|",
    ]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in table_rows(records)]
    lines += ["", *PAIRED_EXPLAINED, ""]
    lines += [verdict(r, baseline) for r in sorted(records, key=lambda r: r.position) if not r.baseline]
    if how_it_ran:
        lines += ["", how_it_ran]
    bad = [r for r in rows if r["status"] != "ok"]
    if bad:
        lines += ["", "Trials that did not finish:", ""]
        lines += [f"- `{r['trial']}` ({r['setting']}, seed {r['seed']}): {r['status']}"
                  f"{': ' + r['error'] if r['error'] else ''}" for r in bad]
    return "\n".join(lines) + "\n"


PAIRED_EXPLAINED = [
    "Paired against the baseline, seed by seed, over the seeds both finished: \"diff vs baseline\" is "
    "the mean of (setting - baseline) test accuracy; \"95% CI\" a percentile bootstrap interval of that "
    f"mean ({stats.DEFAULT_RESAMPLES:,} resamples, fixed seed {stats.DEFAULT_SEED}: the same study gives the "
    "same interval); \"p\" the exact two-sided Wilcoxon signed-rank test; \"seeds needed\" how many "
    "paired seeds a paired t-test needs to resolve the observed difference at 95% / 80% power. "
    f"With n seeds no exact test can go below 2 / 2^n (0.25 for 3 seeds): it takes "
    f"{stats.min_seeds_for_exact()} seeds to reach p < 0.05.",
]


def verdict(record: SettingRecord, baseline: str) -> str:
    """One sentence per setting: its paired difference from the baseline and whether it is resolved."""
    c = record.paired
    head = f"- `{record.setting}` against `{baseline}`"
    if c is None or c.n_seeds == 0:
        return f"{head}: no seed where both finished."
    if c.diff_ci_low is None:
        return f"{head}: {_signed(c.diff_mean)} on the one seed where both finished; no interval from one pair."
    if c.resolved():
        judged = f"resolved, {'higher' if c.diff_ci_low > 0 else 'lower'} than the baseline (the interval excludes zero)"
    else:
        judged = "not resolved with these seeds (the interval includes zero)"
    needed = ("" if c.seeds_needed is None else
              f"; a paired t-test would need {c.seeds_needed} seed(s) for a difference this size")
    return (f"{head}: {_signed(c.diff_mean)} test accuracy over {c.n_seeds} paired seeds, 95% CI "
            f"{_signed(c.diff_ci_low)} to {_signed(c.diff_ci_high)}: {judged}; "
            f"Wilcoxon p = {_p(c.p_value)}, sign test p = {_p(c.p_sign)}{needed}.")


SETTINGS_RESULTS = ["rank", "n_trials", "n_ok", "test_accuracy_mean", "test_accuracy_sd", "n_seeds",
                    "diff_mean", "diff_sd", "diff_ci_low", "diff_ci_high", "p_value", "p_sign",
                    "seeds_needed", "resolved", "beats"]


def settings_csv(records: list[SettingRecord], settings: list[Setting], grid_fields: list[str]) -> str:
    """settings.csv: one row per setting in grid order (the baseline first); the paired columns
    are empty for the baseline, whose n_seeds is the seeds it finished."""
    by_label = {r.setting: r for r in records}
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["setting", *grid_fields, *SETTINGS_RESULTS], lineterminator="\n")
    writer.writeheader()
    for setting in settings:
        r = by_label[setting.label]
        c = r.paired
        row = {"setting": setting.label, **setting.columns, "rank": r.rank, "n_trials": r.n,
               "n_ok": r.n_ok, "test_accuracy_mean": r.test_accuracy_mean,
               "test_accuracy_sd": r.test_accuracy_sd, "n_seeds": r.n_ok if c is None else c.n_seeds,
               "beats": "" if c is None else r.beats}
        if c is not None:
            row.update(diff_mean=c.diff_mean, diff_sd=c.diff_sd, diff_ci_low=c.diff_ci_low,
                       diff_ci_high=c.diff_ci_high, p_value=c.p_value, p_sign=c.p_sign,
                       seeds_needed=c.seeds_needed, resolved=c.resolved())
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buf.getvalue()


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


def plot_comparison(path: Path, curves: dict[str, list[list[dict]]], title: str = "",
                    rows: Optional[list[dict]] = None, baseline: Optional[str] = None) -> None:
    """Left: val_accuracy per epoch, per setting the mean over its seeds as a line and the min–max
    over seeds as a band (later epochs: the seeds that got there); below, each seed's learning rate
    (log axis) in its setting's colour. Right (with `rows`): each seed's test accuracy per setting,
    the mean (what the table ranks by) as a bar, and each seed's line to the baseline's same seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    height = max(7.0, 0.55 * len(curves) + 2) if rows else 7.0
    fig = plt.figure(figsize=(16, height) if rows else (8, 7))
    grid = fig.add_gridspec(2, 2 if rows else 1, height_ratios=[2, 1], width_ratios=[1, 1] if rows else None)
    ax_acc = fig.add_subplot(grid[0, 0])
    ax_lr = fig.add_subplot(grid[1, 0], sharex=ax_acc)
    cmap = plt.get_cmap("tab10" if len(curves) <= 10 else "tab20")
    colors = {label: cmap(i % cmap.N) for i, label in enumerate(curves)}
    _plot_curves(ax_acc, ax_lr, curves, colors)
    if rows:
        _plot_seeds(fig.add_subplot(grid[:, 1]), rows, list(curves), colors, baseline)
    if title:
        fig.suptitle(title)
    save_figure(path, fig)


def _plot_curves(ax_acc: Axes, ax_lr: Axes, curves: dict[str, list[list[dict]]], colors: dict) -> None:
    from matplotlib.ticker import MaxNLocator

    log_ok = True
    for label, histories in curves.items():
        histories = [h for h in histories if h]
        if not histories:
            continue
        epochs, mean, lo, hi = _band(histories, "val_accuracy")
        ax_acc.plot(epochs, mean, marker="o", ms=3, color=colors[label], label=f"{label} (n={len(histories)})")
        ax_acc.fill_between(epochs, lo, hi, color=colors[label], alpha=0.15, lw=0)
        # One schedule per seed: a mean of learning rates that differ by factors of ten (and
        # over fewer seeds once some have stopped) would draw a schedule no run followed.
        for history in histories:
            lrs = [r["lr"] for r in history]
            log_ok = log_ok and min(lrs) > 0
            ax_lr.step([r["epoch"] for r in history], lrs, where="mid", color=colors[label], alpha=0.7, lw=1)
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


def _seed_label(label: str, baseline: Optional[str], acc: dict) -> str:
    """A setting's tick: its name, and its paired difference from the baseline with the interval."""
    if label == baseline:
        return f"{label}\n(baseline)"
    c = stats.paired({seed: a for (s, seed), a in acc.items() if s == label},
                     {seed: a for (s, seed), a in acc.items() if s == baseline})
    if c.diff_mean is None:
        return label
    ci = "" if c.diff_ci_low is None else f" [{_signed(c.diff_ci_low)}, {_signed(c.diff_ci_high)}]"
    return f"{label}\n{_signed(c.diff_mean)}{ci}"


def _plot_seeds(ax: Axes, rows: list[dict], order: list[str], colors: dict, baseline: Optional[str]) -> None:
    """One row per setting (the baseline on top): each seed's test accuracy (filled) joined by a
    line to the baseline's with the same seed (hollow), green where the setting is higher and red
    where lower; the mean over seeds (what the table ranks by) as a bar with its value."""
    acc = {(r["setting"], r["seed"]): float(r["test_accuracy"]) for r in rows
           if r["status"] == "ok" and r.get("test_accuracy") is not None}
    base = {seed: a for (setting, seed), a in acc.items() if setting == baseline}
    seeds = sorted({seed for _, seed in acc})
    offset = {seed: (j - (len(seeds) - 1) / 2) * min(0.6 / max(len(seeds), 1), 0.15) for j, seed in enumerate(seeds)}
    for y, label in enumerate(order):
        mine = {seed: a for (setting, seed), a in acc.items() if setting == label}
        for seed, a in mine.items():
            if label != baseline and seed in base:
                up = a > base[seed]
                ax.plot([base[seed], a], [y + offset[seed]] * 2, color="tab:green" if up else "tab:red",
                        alpha=0.6, lw=1.2, zorder=2)
                ax.scatter([base[seed]], [y + offset[seed]], facecolor="white", edgecolor="grey", s=18, zorder=3)
            ax.scatter([a], [y + offset[seed]], color=colors[label], edgecolor="black", linewidth=0.4, s=24, zorder=4)
            if label == baseline:
                ax.annotate(f" seed {seed}", (a, y + offset[seed]), va="center", fontsize="xx-small", color="grey")
        if mine:
            mean = statistics.fmean(mine.values())
            ax.vlines(mean, y - 0.35, y + 0.35, color=colors[label], lw=3, zorder=3)
            ax.annotate(f"{mean:.4f}", (mean, y - 0.38), ha="center", va="bottom", fontsize="x-small",
                        color=colors[label])
    ax.set_yticks(range(len(order)))
    ax.set_yticklabels([_seed_label(label, baseline, acc) for label in order],
                       fontsize="small" if len(order) <= 6 else "x-small")
    ax.set_ylim(len(order) - 0.5, -0.6)
    ax.set_xlabel("test accuracy (dots: seeds; bar: the mean, the rank order)")
    ax.set_title("per seed, joined to the baseline's same seed (hollow)", fontsize="medium")
    ax.grid(alpha=0.3, axis="x")


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
