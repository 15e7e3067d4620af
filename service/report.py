"""Output files of a run: history.csv, decisions.jsonl, summary.json, curves.png.

Every file is written whole to a temporary name and renamed into place (`files.write_atomic`), so
a crash never leaves a torn file behind: a reader sees the previous version or the new one. Files get the
permissions of any other new file (0666 less the umask). JSON files are strict JSON: a
non-finite number (a diverged run's NaN) is written as null.

Example::

    write_history(out / "history.csv", rows)
    write_json(out / "summary.json", summarize(...))
    plot_curves(out / "curves.png", rows, lr_reductions, stop_epoch)
"""

from __future__ import annotations

import csv
import io
import json
import math
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Optional

from service.files import write_atomic
from service.core.messages import HISTORY_COLUMNS
from service.spec import METRICS, MonitoredSpec, TrainSpec, dump_spec
from service.stopreason import StopReason, words_of

if TYPE_CHECKING:  # matplotlib is imported only when a figure is drawn
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

INTEGER_COLUMNS = ("epoch", "workers")
MODEL_FILE = "model.keras"  # the final model, stock tf_keras layers (each engine's export.py)


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(finite_or_null(data), indent=2, default=_jsonable, allow_nan=False) + "\n")


def finite_or_null(data: Any) -> Any:
    """`data` with every NaN or infinity replaced by None (JSON has no such numbers)."""
    if isinstance(data, dict):
        return {k: finite_or_null(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite_or_null(v) for v in data]
    if isinstance(data, float) and not math.isfinite(data):
        return None
    return data


def _jsonable(value: Any):
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_history(path: Path, rows: Iterable[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HISTORY_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
    write_atomic(path, buf.getvalue())


def read_history(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return [{k: _number(k, v) for k, v in row.items()} for row in csv.DictReader(f)]


def _number(column: str, text: str):
    """A history cell; empty (a column an older run did not write) reads as None."""
    if text == "":
        return None
    return int(text) if column in INTEGER_COLUMNS else float(text)


def write_decisions(path: Path, decisions: Iterable[dict]) -> None:
    write_atomic(path, "".join(json.dumps(finite_or_null(d), allow_nan=False) + "\n" for d in decisions))


def read_decisions(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def write_run(out_dir: Path, spec: TrainSpec, history: list[dict], decisions: list[dict],
              summary: dict | None = None) -> None:
    """A run's folder in one go (a study's driver writes each trial's from what the trial returned)."""
    write_atomic(Path(out_dir) / "spec.yaml", dump_spec(spec))
    write_history(Path(out_dir) / "history.csv", history)
    write_decisions(Path(out_dir) / "decisions.jsonl", decisions)
    if summary is not None:
        write_json(Path(out_dir) / "summary.json", summary)
        plot_curves(Path(out_dir) / "curves.png", history, summary["lr_reductions"], summary["stop_epoch"],
                    title=summary["name"], monitored=spec.monitored)


def lr_reductions(decisions: list[dict]) -> list[dict]:
    """[{epoch, lr}]: the epochs at whose end the learning rate went down, and the new rate."""
    return [{"epoch": d["epoch"], "lr": d["lr_after"]} for d in decisions if d["rank"] == 0 and d["reduced"]]


def summarize(*, name: str, data: dict, workers: int, max_epochs: int, history: list[dict],
              decisions: list[dict], test: dict, wall_seconds: float, placement: list[dict] = ()) -> dict:
    """summary.json: the run in one object (see the README for each key)."""
    rank0 = [d for d in decisions if d["rank"] == 0]
    stopped = bool(rank0 and rank0[-1]["stop"])
    finite = [r for r in history if _finite(r["val_accuracy"]) and _finite(r["val_loss"])]
    best = max(finite, key=lambda r: r["val_accuracy"]) if finite else None
    final_lr = rank0[-1]["lr_after"] if rank0 else None
    return {
        "name": name,
        "data": data,
        "workers": workers,
        "max_epochs": max_epochs,
        "epochs_run": len(history),
        "stopped_early": stopped,
        "stop_epoch": rank0[-1]["epoch"] if stopped else None,
        "stop_reason": run_stop_reason(decisions, max_epochs),
        "best_epoch": best["epoch"] if best else None,
        "best_val_accuracy": best["val_accuracy"] if best else None,
        "best_val_loss": min(r["val_loss"] for r in finite) if finite else None,
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


def resizes(history: list[dict]) -> list[dict]:
    """[{epoch, from, to}]: the first epoch an elastic run trained with another number of workers."""
    return [{"epoch": row["epoch"], "from": before["workers"], "to": row["workers"]}
            for before, row in zip(history, history[1:]) if row["workers"] != before["workers"]]


def workers_phrase(spec: TrainSpec) -> str:
    """How a run splits its global batch: `2 worker(s) x batch 100`, `3 workers sharing batch 200`,
    `1-2 workers sharing batch 200`."""
    scaling, batch = spec.scaling, spec.training.batch_size
    if scaling.elastic:
        return f"{scaling.min_workers}-{scaling.max_workers} workers sharing batch {batch}"
    if batch % spec.workers:
        return f"{spec.workers} workers sharing batch {batch}"
    return f"{spec.workers} worker(s) x batch {batch // spec.workers}"


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def run_stop_reason(decisions: list[dict], max_epochs: int) -> str | None:
    """Rank 0's reason on the last epoch; `max_epochs` when the run simply trained them all."""
    rank0 = [d for d in decisions if d["rank"] == 0]
    if not rank0:
        return None
    reason = rank0[-1].get("stop_reason")
    if reason is None and not rank0[-1]["stop"] and rank0[-1]["epoch"] >= max_epochs:
        return StopReason.MAX_EPOCHS
    return reason


def non_finite_metrics(values: dict) -> list[str]:
    """The metrics of a decision record that are NaN or infinite (null in a file)."""
    return [k for k in METRICS if k in values and not _finite(values[k])]


def non_finite_words(values: dict) -> str | None:
    """`stopped: loss is inf` for the first metric of `values` (a history row, a decision's
    values) that is not finite; None when all are."""
    bad = non_finite_metrics(values)
    return f"stopped: {bad[0]} is {values[bad[0]]}" if bad else None


def stop_words(decision: dict) -> str:
    """A decision's stop reason in words, naming the metric when one was not finite."""
    reason = decision.get("stop_reason")
    if reason == StopReason.NON_FINITE:
        return non_finite_words(decision["values"]) or StopReason.NON_FINITE.words
    return words_of(reason, "early stop")


def replicas_identical(decisions: list[dict]) -> bool | None:
    """True when the replica check found every rank's state identical at every epoch; None when
    it did not run (one worker, or switched off)."""
    checked = [d.get("replicas_identical") for d in decisions]
    if not checked or any(c is None for c in checked):
        return None
    return all(checked)


def ranks_agree(decisions: list[dict]) -> bool:
    """True when every rank saw the same values and took the same decision at every epoch."""
    by_epoch: dict[int, list[dict]] = {}
    for d in decisions:
        by_epoch.setdefault(d["epoch"], []).append(d)
    keys = ("values", "lr_before", "lr_after", "reduced", "stop", "plateau_wait", "stopping_wait")
    return all(all(tuple(d[k] for k in keys) == tuple(rows[0][k] for k in keys) for d in rows)
               for rows in by_epoch.values())


def epoch_line(row: dict, decision: dict | None, max_epochs: int, pace: str = "",
               workers_before: int | None = None) -> str:
    """One terminal line per epoch, with the callbacks' actions spelled out; `pace` (elapsed time
    and ETA, `progress.Pace`) follows the epoch's seconds; a change in the number of workers (an
    elastic run) is said."""
    width = len(str(max_epochs))
    parts = [
        f"epoch {row['epoch']:>{width}}/{max_epochs}",
        f"loss {row['loss']:.4f}",
        f"accuracy {row['accuracy']:.4f}",
        f"val_loss {row['val_loss']:.4f}",
        f"val_accuracy {row['val_accuracy']:.4f}",
        f"lr {row['lr']:.3g}",
        f"{row['seconds']:.1f}s",
    ]
    if pace:
        parts.append(pace)
    if workers_before is not None and row.get("workers") not in (None, workers_before):
        parts.append(f"workers {workers_before} -> {row['workers']}")
    if decision is not None and decision["reduced"]:
        parts.append(f"lr -> {decision['lr_after']:.3g}")
    if decision is not None and decision["stop"]:
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
    accuracy = f"{accuracy:.4f}" if _finite(accuracy) else "n/a"
    return (f"done: {summary['epochs_run']} epochs ({why}), test accuracy {accuracy}, "
            f"lr reductions at {reductions} -> {out_dir}")


def best_epoch_of(history: list[dict], monitor: str, higher: bool) -> Optional[dict]:
    """The row where `monitor` is best (the highest if `higher`, else the lowest; first of ties)."""
    rows = [r for r in history if r.get(monitor) is not None]
    if not rows:
        return None
    return max(rows, key=lambda r: r[monitor]) if higher else min(rows, key=lambda r: r[monitor])


def _metric_panel(ax: Axes, history: list[dict], keys: tuple[str, str], monitored: Optional[MonitoredSpec],
                  ylabel: str) -> None:
    """Two curves on one axis; the monitored one drawn thick, with its best epoch (by the
    callback's own direction, `MonitoredSpec.higher_is_better`) starred."""
    epochs = [r["epoch"] for r in history]
    monitor = monitored.monitor if monitored is not None else None
    for key, color in zip(keys, ("tab:blue", "tab:orange")):
        watched = key == monitor
        ax.plot(epochs, [r[key] for r in history], marker="o", ms=4 if watched else 3, color=color,
                lw=2.6 if watched else 1.2, alpha=1.0 if watched else 0.75,
                label=f"{key} (monitored)" if watched else key)
        best = best_epoch_of(history, key, monitored.higher_is_better) if watched else None
        if best is not None:
            ax.plot([best["epoch"]], [best[key]], marker="*", ms=16, color="gold", mec="black", zorder=5,
                    label=f"best {key} {best[key]:.4f} (epoch {best['epoch']})")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)


def import_plotting_soon() -> None:
    """Import matplotlib in a background thread, so that curves.png after the last epoch does not
    wait for the import (about 0.4 s of the time between the last epoch and `done:`)."""
    threading.Thread(target=_import_plotting, name="plateau-import-matplotlib", daemon=True).start()


def _import_plotting() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401


def plot_curves(path: Path, history: list[dict], reductions: list[dict], stop_epoch: int | None,
                title: str = "", monitored: Optional[MonitoredSpec] = None) -> None:
    """Loss and val_loss | accuracy and val_accuracy per epoch, the monitored metric drawn thick with
    its best epoch starred; below the accuracy, the learning rate (log axis); LR reductions (dashed green, between
    the epoch that decided and the first at the new rate) and the early stop (red) on every panel."""
    _import_plotting()
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig = plt.figure(figsize=(11, 7))
    grid = fig.add_gridspec(2, 2, height_ratios=[2, 1])
    ax_loss = fig.add_subplot(grid[:, 0])
    ax_acc = fig.add_subplot(grid[0, 1], sharex=ax_loss)
    ax_lr = fig.add_subplot(grid[1, 1], sharex=ax_loss)
    if history:
        _metric_panel(ax_loss, history, ("loss", "val_loss"), monitored, "loss")
        _metric_panel(ax_acc, history, ("accuracy", "val_accuracy"), monitored, "accuracy")
        epochs, lrs = [r["epoch"] for r in history], [r["lr"] for r in history]
        ax_lr.step(epochs, lrs, where="mid", color="tab:green", label="learning rate")
        if all(lr > 0 for lr in lrs):
            ax_lr.set_yscale("log")
    ax_lr.set_ylabel("learning rate")
    for ax in (ax_loss, ax_lr):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_lr.grid(alpha=0.3, which="both")
    for ax in (ax_loss, ax_acc, ax_lr):
        for i, red in enumerate(reductions):
            ax.axvline(red["epoch"] + 0.5, color="tab:green", ls="--", lw=1,
                       label=f"lr reduced ({len(reductions)}x)" if i == 0 else None)
        if stop_epoch is not None:
            ax.axvline(stop_epoch, color="tab:red", lw=1.5, label=f"early stop (epoch {stop_epoch})")
    ax_loss.legend(loc="best", fontsize="small")
    ax_acc.legend(loc="best", fontsize="small")
    ax_lr.legend(loc="upper right", fontsize="small")
    if title:
        fig.suptitle(title)
    save_figure(path, fig)


def save_figure(path: Path, fig: Figure) -> None:
    """Render a matplotlib figure to PNG and write it atomically; closes the figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    write_atomic(path, buf.getvalue())
