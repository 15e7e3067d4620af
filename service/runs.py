"""The run index: `plateau runs [OUTPUT]` and `plateau show NAME`.

Every train run and study marks its folder with `status.json` ({kind, state, started, host,
pid, ended, error, note}): `running` when it starts, `failed` with the error, `finished` at the
end (a train run also counts as finished whenever its summary.json exists). A folder is
`running` while a live command holds its lock (`runlock`: its process is alive on this host, or
on another host its heartbeat is recent); one that did not finish and that nobody holds is
`interrupted` (or `failed`, as marked).

`index(output)` lists OUTPUT/*/ (train runs: a spec.yaml of kind train; studies: status.json of
kind compare, or a comparison.csv), newest first. `show(folder)` is the run's summary and each
epoch's decisions in words (`explain`), or a study's comparison.md.

Example::

    for row in index(Path("results")):
        print(row["name"], row["status"], row["test_accuracy"])
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import json
import os
import socket
from pathlib import Path
from typing import Optional

import yaml

from service import runlock
from service.console import text_table
from service.errors import BadInput
from service.report import files as run_files
from service.stopreason import StopReason

STATUS = "status.json"
COLUMNS = ("name", "kind", "status", "epochs", "stop_reason", "test_accuracy", "data", "started")


class RunNotFound(BadInput):
    """`plateau show NAME` found no such run (exit 2)."""


# ---------------------------------------------------------------------------------------------
# Marks


def _now() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


def read_status(folder: Path) -> dict:
    try:
        data = json.loads((Path(folder) / STATUS).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def mark_started(folder: Path, kind: str) -> None:
    """The run starts (or resumes: its first start time stays)."""
    earlier = read_status(folder)
    run_files.write_json(Path(folder) / STATUS, {
        "kind": kind, "state": "running", "started": earlier.get("started") or _now(),
        "host": socket.gethostname(), "pid": os.getpid()})


def _update(folder: Path, **fields) -> None:
    status = read_status(folder)
    run_files.write_json(Path(folder) / STATUS, {**status, **fields, "ended": _now()})


def mark_failed(folder: Path, error: str) -> None:
    _update(folder, state="failed", error=error)


def mark_finished(folder: Path, note: str = "") -> None:
    _update(folder, state="finished", note=note)


def _state(status: dict, finished: bool, holder: Optional[runlock.Holder]) -> str:
    """finished, running (a live command holds the folder's lock), failed or interrupted."""
    if finished:
        return "finished"
    if holder is not None:
        return "running"
    return "failed" if status.get("state") == "failed" else "interrupted"


def _holder_fields(holder: Optional[runlock.Holder]) -> dict:
    """`holder` (the lock's fields, null when no live command holds the folder) and, for a
    running row, the STOP REASON column's `held by pid P on HOST`."""
    if holder is None:
        return {"holder": None}
    return {"holder": dataclasses.asdict(holder), "stop_reason": f"held by pid {holder.pid} on {holder.host}"}


# ---------------------------------------------------------------------------------------------
# The index


def _load(path: Path):
    try:
        if path.suffix == ".json":
            return json.loads(path.read_text())
        return yaml.safe_load(path.read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return None


def _started(folder: Path, status: dict) -> str:
    if status.get("started"):
        return status["started"]
    first = min((p.stat().st_mtime for p in folder.iterdir()), default=folder.stat().st_mtime)
    return dt.datetime.fromtimestamp(first).astimezone().isoformat(timespec="seconds")


def why_it_ended(summary: dict) -> str:
    """The summary's own stop_reason (`patience at epoch 5`, `max_epochs`); a summary from before
    stop reasons says early stopping or the epoch limit."""
    reason = summary.get("stop_reason")
    if reason:
        return f"{reason} at epoch {summary.get('stop_epoch')}" if summary.get("stopped_early") else str(reason)
    if summary.get("stopped_early"):
        return f"early stopping at epoch {summary.get('stop_epoch')}"
    return StopReason.MAX_EPOCHS.value


def train_row(folder: Path) -> dict:
    status, summary = read_status(folder), _load(folder / "summary.json")
    spec = _load(folder / "spec.yaml") or {}
    row = {"name": folder.name, "kind": "train", "path": str(folder), "started": _started(folder, status)}
    if isinstance(summary, dict):
        diverged = summary.get("stop_reason") == StopReason.NON_FINITE  # it has a summary, and exit 1
        return {**row, "status": "failed" if diverged else "finished", "epochs": summary.get("epochs_run"), "stop_reason": why_it_ended(summary),
                "test_accuracy": summary.get("test_accuracy"),
                "data": (summary.get("data") or {}).get("source") or (spec.get("data") or {}).get("source"),
                "holder": None}
    history = folder / "history.csv"
    epochs = len(run_files.read_history(history)) if history.exists() else 0
    holder = runlock.holder(folder)
    state = _state(status, False, holder)
    return {**row, "status": state, "epochs": epochs, "stop_reason": status.get("error", "") if state == "failed" else "",
            "test_accuracy": None, "data": (spec.get("data") or {}).get("source"), **_holder_fields(holder)}


def study_row(folder: Path) -> dict:
    status = read_status(folder)
    finished = status.get("state") == "finished" or (not status and (folder / "comparison.md").exists())
    holder = runlock.holder(folder)
    state = _state(status, finished, holder)
    trials = list(csv.DictReader((folder / "comparison.csv").open())) if (folder / "comparison.csv").exists() else []
    ok = [t for t in trials if t["status"] == "ok"]
    best = max((float(t["test_accuracy"]) for t in ok), default=None)
    data = next((s.get("data", {}).get("source") for s in
                 (_load(p) for p in sorted(folder.glob("trials/*/summary.json"))) if isinstance(s, dict)), None)
    reason = status.get("note") or (f"{len(ok)}/{len(trials)} trials ok" if trials else "")
    if state == "failed":
        reason = status.get("error", "")
    return {"name": folder.name, "kind": "compare", "path": str(folder), "started": _started(folder, status),
            "status": state, "epochs": None, "stop_reason": reason, "test_accuracy": best, "data": data,
            "trials": len(trials), "trials_ok": len(ok), **_holder_fields(holder if state == "running" else None)}


def kind_of(folder: Path) -> Optional[str]:
    status = read_status(folder)
    if status.get("kind") in ("train", "compare"):
        return status["kind"]
    if (folder / "comparison.csv").exists():
        return "compare"
    spec = _load(folder / "spec.yaml")
    if isinstance(spec, dict) and spec.get("kind", "train") == "train":
        return "train"
    return None


def index(output: Path) -> list[dict]:
    """Every run and study directly under `output`, newest first."""
    output = Path(output)
    if not output.is_dir():
        raise RunNotFound(f"{output}: no such folder; pass the OUTPUT folder runs were written to (default results)")
    rows = []
    for folder in sorted(p for p in output.iterdir() if p.is_dir()):
        kind = kind_of(folder)
        if kind == "train":
            rows.append(train_row(folder))
        elif kind == "compare":
            rows.append(study_row(folder))
    return sorted(rows, key=lambda r: r["started"], reverse=True)


def table(rows: list[dict]) -> str:
    """The index as aligned text columns."""
    def cell(row: dict, key: str) -> str:
        value = row.get(key)
        if key == "test_accuracy" and value is not None:
            return f"{value:.4f}"
        if key == "started" and value:
            return value[:19].replace("T", " ")
        return "-" if value in (None, "") else str(value)

    header = [c.upper().replace("_", " ") for c in COLUMNS]
    return text_table(header, [[cell(r, c) for c in COLUMNS] for r in rows])


# ---------------------------------------------------------------------------------------------
# One run


def find(name: str, output: Path) -> Path:
    """NAME as a folder path, OUTPUT/NAME, or a study's trial OUTPUT/*/trials/NAME."""
    candidates = [Path(name), Path(output) / name, *sorted(Path(output).glob(f"*/trials/{name}"))]
    for folder in candidates:
        if folder.is_dir() and kind_of(folder):
            return folder
    raise RunNotFound(f"no run or study named {name!r} under {output}; `plateau runs {output}` lists them")


def summary_lines(summary: dict) -> list[str]:
    """`key: value` per summary field (text as it is, anything else as JSON: null, true, [...])."""
    width = max((len(k) for k in summary), default=0)
    return [f"{k + ':':<{width + 1}} {v if isinstance(v, str) else json.dumps(v)}" for k, v in summary.items()]


def show(folder: Path) -> str:
    """A train run: its status, summary and each epoch's decisions in words; a study: comparison.md."""
    from service.explain import explain
    from service.spec import validate_train

    folder = Path(folder)
    if kind_of(folder) == "compare":
        md = folder / "comparison.md"
        row = study_row(folder)
        head = f"{folder.name}: study, {row['status']}"
        return head + "\n\n" + (md.read_text() if md.exists() else "no comparison.md yet\n")
    row = train_row(folder)
    lines = [f"{folder.name}: train run, {row['status']}" + (f" ({row['stop_reason']})" if row["stop_reason"] else "")]
    summary = _load(folder / "summary.json")
    if isinstance(summary, dict):
        lines += summary_lines(summary)
    spec_data = _load(folder / "spec.yaml")
    decisions = run_files.read_decisions(folder / "decisions.jsonl") if (folder / "decisions.jsonl").exists() else []
    if isinstance(spec_data, dict) and decisions:
        lines += ["", "decisions:"] + explain(validate_train(spec_data), decisions)
    return "\n".join(lines) + "\n"
