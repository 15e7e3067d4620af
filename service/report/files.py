"""A run's output files: history.csv, decisions.jsonl, summary.json (written whole), spec.yaml, the model.

Every file is written whole to a temporary name and renamed into place (`service.files.write_atomic`),
so a crash never leaves a torn file behind: a reader sees the previous version or the new one. Files
get the permissions of any other new file (0666 less the umask). JSON files are strict JSON: a
non-finite number (a diverged run's NaN) is written as null. What goes in and comes out are the
files' own rows (column or key -> value); `records` turns them into typed records and back.

Example::

    write_history(out / "history.csv", rows)
    write_json(out / "summary.json", summary)
    read_decisions(out / "decisions.jsonl")[0]["lr_after"]
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Iterable

from service.files import write_atomic
from service.core.messages import HISTORY_COLUMNS
from service.report.plots import plot_curves
from service.report.records import HistoryRow
from service.spec import TrainSpec, dump_spec

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
    """A run's folder in one go, from its rows (a study's driver writes each trial's from what the
    trial returned)."""
    write_atomic(Path(out_dir) / "spec.yaml", dump_spec(spec))
    write_history(Path(out_dir) / "history.csv", history)
    write_decisions(Path(out_dir) / "decisions.jsonl", decisions)
    if summary is not None:
        write_json(Path(out_dir) / "summary.json", summary)
        plot_curves(Path(out_dir) / "curves.png", [HistoryRow.from_row(r) for r in history], summary["lr_reductions"],
                    summary["stop_epoch"], title=summary["name"], monitored=spec.monitored)
