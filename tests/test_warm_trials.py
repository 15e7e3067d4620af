"""A study's warm trials (service/compare/plan.py's `plan_processes`): trials that share one Tune
process train what each would train alone.

The study runs its four trials one at a time, so the last three train in a process that already
trained another setting or seed (its engine imported, its Keras state, and on keras_jax its
compiled epoch, all from before); the last trial's history must then be the one `plateau train`
gives its spec.yaml in a process of its own, on a 1-worker Ray Train run, to the last bit.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.engines import ENGINES
from tests.support.limits import RUN_S

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    home = cwd / "home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(home), PYTHONUNBUFFERED="1", RAY_USAGE_STATS_ENABLED="0")
    proc = subprocess.run([sys.executable, "-m", "service.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=RUN_S)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def _history(folder: Path) -> list[dict]:
    """history.csv without its timings (the one column that differs between two runs)."""
    return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader((folder / "history.csv").open())]


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
def test_a_warm_trial_trains_what_plateau_train_trains(tmp_path, engine):
    spec = tmp_path / "study.yaml"
    spec.write_text(
        "kind: compare\nname: warm\n"
        f"base: {PROJECT_ROOT / 'jobs' / 'seed-reduce-lr.yaml'}\n"
        "grid:\n"
        "  reduce_lr: [null, {monitor: val_accuracy, factor: 0.5, patience: 0, min_delta: 1.0}]\n"
        "seeds: [7]\n"
        "max_concurrent_trials: 1\n")
    out = tmp_path / "out"
    study = _cli(["compare", str(spec), "--data", "sample", "--epochs", "2", "--output", str(out),
                  "--set", f"base.training.engine={engine}"], tmp_path)
    assert "1 worker(s) each" in study.stdout and "warm processes:" in study.stdout, study.stdout
    assert json.loads((out / "warm" / "plan.json").read_text())["warm"] is True

    trials = sorted((out / "warm" / "trials").iterdir())
    assert [t.name for t in trials] == ["warm-reduce_lr-off-s7", "warm-reduce_lr-on-s7"]
    # One process trained both, one after the other.
    pids = {json.loads((t / "summary.json").read_text())["placement"][0]["pid"] for t in trials}
    assert len(pids) == 1, pids

    last = trials[-1]
    _cli(["train", str(last / "spec.yaml"), "--output", str(tmp_path / "alone")], tmp_path)
    alone = tmp_path / "alone" / last.name
    assert json.loads((alone / "summary.json").read_text())["placement"][0]["pid"] not in pids
    warm_history, alone_history = _history(last), _history(alone)
    assert len(warm_history) == 2 and warm_history == alone_history
    # The reduction the warm trial's setting asks for happened in both (a real difference from the
    # trials before it in that process).
    assert [row["lr"] for row in warm_history] == ["0.01", "0.01"]
    decisions, decisions_alone = ([json.loads(line) for line in (f / "decisions.jsonl").read_text().splitlines()]
                                  for f in (last, alone))
    assert decisions[-1]["lr_after"] == 0.005 and decisions == decisions_alone
    summary, summary_alone = (json.loads((f / "summary.json").read_text()) for f in (last, alone))
    assert summary["test_accuracy"] == summary_alone["test_accuracy"]
