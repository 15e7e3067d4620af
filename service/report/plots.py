"""curves.png: a run's loss, accuracy and learning rate per epoch, its reductions and its stop;
and writing any figure as a PNG file (a study's comparison.png too).

Example::

    import_plotting_soon()       # while training goes on
    plot_curves(out / "curves.png", rows, summary["lr_reductions"], summary["stop_epoch"])
"""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from service.files import write_atomic
from service.report.records import HistoryRow
from service.spec import MonitoredSpec

if TYPE_CHECKING:  # matplotlib is imported only when a figure is drawn
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def best_epoch_of(history: list[HistoryRow], monitor: str, higher: bool) -> Optional[HistoryRow]:
    """The row where `monitor` is best (the highest if `higher`, else the lowest; first of ties)."""
    rows = [r for r in history if r.metric(monitor) is not None]
    if not rows:
        return None
    return max(rows, key=lambda r: r.metric(monitor)) if higher else min(rows, key=lambda r: r.metric(monitor))


def _metric_panel(ax: Axes, history: list[HistoryRow], keys: tuple[str, str], monitored: Optional[MonitoredSpec],
                  ylabel: str) -> None:
    """Two curves on one axis; the monitored one drawn thick, with its best epoch (by the
    callback's own direction, `MonitoredSpec.higher_is_better`) starred."""
    epochs = [r.epoch for r in history]
    monitor = monitored.monitor if monitored is not None else None
    for key, color in zip(keys, ("tab:blue", "tab:orange")):
        watched = key == monitor
        ax.plot(epochs, [r.metric(key) for r in history], marker="o", ms=4 if watched else 3, color=color,
                lw=2.6 if watched else 1.2, alpha=1.0 if watched else 0.75,
                label=f"{key} (monitored)" if watched else key)
        best = best_epoch_of(history, key, monitored.higher_is_better) if watched else None
        if best is not None:
            ax.plot([best.epoch], [best.metric(key)], marker="*", ms=16, color="gold", mec="black", zorder=5,
                    label=f"best {key} {best.metric(key):.4f} (epoch {best.epoch})")
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


def plot_curves(path: Path, history: list[HistoryRow], reductions: list[dict], stop_epoch: int | None,
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
        epochs, lrs = [r.epoch for r in history], [r.lr for r in history]
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
