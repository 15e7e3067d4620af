"""The study's driver: a CompareSpec -> checked trials -> Ray Tune -> comparison files.

`run(spec)` expands the grid into trials and validates every trial's spec, checks each data
source once, reuses trials an interrupted study already finished, runs the rest as Tune trials,
and writes OUTPUT/STUDY/: comparison.csv, comparison.md, comparison.png (and trials/NAME/, each
trial's own train-run folder, tune/, Tune's bookkeeping).

Example::

    spec = load_spec("jobs/seed-comparison.yaml", ["base.data.source=sample", "base.training.epochs=2"])
    exit_code = run(spec)
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Callable, Optional

import yaml

from service import cluster, report
from service import data as data_lib
from service.compare.aggregate import aggregate
from service.compare.grid import Setting, Trial, expand
from service.compare.tables import (TABLE_HEADER, TrialOutcome, csv_text, live_line, markdown, plot_comparison,
                                    table_rows, text_table, trial_row)
from service.errors import EXIT_FAILED, EXIT_OK, BadInput, cause_line
from service.spec import CompareSpec, SpecError, dump_spec

Echo = Callable[[str], None]


def run(spec: CompareSpec, address: Optional[str] = None, verbose: bool = False, fresh: bool = False,
        echo: Echo = print, data_cache: Optional[Path] = None) -> int:
    """Run the study; 0 when it completed (some trials may have failed), 1 when it failed or no
    trial finished. Raises a `BadInput` (a bad grid, bad data, an address nothing answers at)
    before anything starts.
    """
    started = time.perf_counter()
    if address:
        cluster.check_gcs_address(address)
    study_dir = (Path(spec.output) / spec.name).resolve()
    trials = expand(spec, study_dir / "trials")
    settings = list({t.setting.index: t.setting for t in trials}.values())
    _pin_data(trials, echo, data_cache)
    if fresh and study_dir.exists():
        shutil.rmtree(study_dir)
    reused = _count_finished(trials)
    echo(f"{spec.name}: {len(settings)} setting(s) x {len(spec.seeds)} seed(s) = {len(trials)} trials, "
         f"up to {spec.max_concurrent_trials} at a time"
         f"{f', {reused} already finished' if reused else ''} -> {study_dir}")

    if reused == len(trials):  # nothing to train: no Ray needed
        echo("every trial already finished; use --fresh to train them again")
        outcomes = {t.name: _finished(t) for t in trials}
        for i, t in enumerate(trials, 1):
            echo(live_line(i, len(trials), t, outcomes[t.name]))
    else:
        from service.compare.trials import run_tune  # imports Ray Tune: only when there is work

        try:
            outcomes = run_tune(spec, trials, study_dir, address, verbose, echo, data_cache)
        except BadInput:
            raise
        except Exception as exc:
            echo(f"plateau: the study failed: {cause_line(exc)}")
            return EXIT_FAILED
    n_ok = _write_results(spec, trials, settings, outcomes, study_dir, echo)
    echo(f"{n_ok}/{len(trials)} trials finished in {time.perf_counter() - started:.0f}s; baseline: "
         f"{settings[0].label} -> {study_dir / 'comparison.md'}")
    if n_ok == 0:
        echo("plateau: no trial finished; see the errors above")
        return EXIT_FAILED
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
# Before any trial starts


def _pin_data(trials: list[Trial], echo: Echo, data_cache: Optional[Path]) -> None:
    """Load each distinct data source once, before any trial (raises DataError), and pin the
    trials to what was found: "auto" becomes the source it resolved to, and a relative path
    becomes absolute (Tune runs each trial in its own working directory)."""
    resolved: dict[tuple[str, str], str] = {}
    for t in trials:
        key = (t.spec.data.source, t.spec.data.validation)
        if key not in resolved:
            splits = data_lib.load(key[0], key[1], warn=lambda m: echo(f"WARNING: {m}"), cache_dir=data_cache)
            source = key[0]
            if source == "auto":
                source = splits.source
            elif Path(source).exists():
                source = str(Path(source).resolve())
            resolved[key] = source
        if resolved[key] != t.spec.data.source:
            t.spec = t.spec.model_copy(update={"data": t.spec.data.model_copy(update={"source": resolved[key]})})


def _count_finished(trials: list[Trial]) -> int:
    """Trials already finished with the same spec (reused); a different spec there is an error.
    (The output folder may differ: a study folder can be moved.)"""
    reused = 0
    for t in trials:
        folder = Path(t.spec.output) / t.name
        if not (folder / "spec.yaml").exists():
            continue
        try:
            earlier = yaml.safe_load((folder / "spec.yaml").read_text())
        except yaml.YAMLError:
            earlier = None
        mine = yaml.safe_load(dump_spec(t.spec))
        if not isinstance(earlier, dict) or {**earlier, "output": None} != {**mine, "output": None}:
            raise SpecError(f"{folder} holds a run of a different spec; use --fresh to discard the "
                            f"study's earlier results, or --name to start another study")
        reused += (folder / "summary.json").exists()
    return reused


def _finished(trial: Trial) -> TrialOutcome:
    folder = Path(trial.spec.output) / trial.name
    summary = json.loads((folder / "summary.json").read_text())
    return TrialOutcome("ok", summary, "", report.read_history(folder / "history.csv"),
                        report.read_decisions(folder / "decisions.jsonl"), reused=True)


# ---------------------------------------------------------------------------------------------
# After the trials


def _write_results(spec: CompareSpec, trials: list[Trial], settings: list[Setting], outcomes: dict,
                   study_dir: Path, echo: Echo) -> int:
    """comparison.csv/.md/.png and the ranked table on the terminal; returns the trials that finished."""
    rows, curves = [], {s.label: [] for s in settings}
    for t in trials:
        outcome = outcomes.get(t.name) or TrialOutcome("failed", error="no result from Tune")
        if outcome.history and not outcome.reused:  # the trial's own folder, here on the driver's node
            report.write_run(Path(t.spec.output) / t.name, dump_spec(t.spec), outcome.history, outcome.decisions,
                             outcome.summary)
        row = trial_row(t, outcome)
        if outcome.status != "ok" and outcome.history:  # what it trained before it ended
            row["epochs_run"] = len(outcome.history)
            row["best_val_accuracy"] = max(r["val_accuracy"] for r in outcome.history)
        rows.append(row)
        if outcome.status == "ok":
            curves[t.setting.label].append(outcome.history)
    records = aggregate(rows, [s.label for s in settings])
    report.write_atomic(study_dir / "comparison.csv", csv_text(rows, list(spec.grid)))
    report.write_atomic(study_dir / "comparison.md", markdown(spec, records, rows, settings, trials))
    plot_comparison(study_dir / "comparison.png", curves, title=spec.name)
    echo("")
    echo(text_table(TABLE_HEADER, table_rows(records)))
    return sum(r["status"] == "ok" for r in rows)
