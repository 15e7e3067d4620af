"""The study's driver: a CompareSpec -> checked trials -> Ray Tune -> comparison files.

`run(spec)` expands the grid into trials and validates every trial's spec, holds the study
folder's lock (`runlock`), checks each data source once, reuses trials an interrupted study
already finished, runs the rest as Tune trials (in rounds, one more seed each, with sequential
seeding: `seeding`), and writes OUTPUT/STUDY/:
comparison.csv, settings.csv, comparison.md, comparison.png (and trials/NAME/, each trial's own
train-run folder with its TensorBoard events, tune/, Tune's bookkeeping).

Example::

    spec = load_spec("jobs/seed-comparison.yaml", ["base.data.source=sample", "base.training.epochs=2"])
    exit_code = run(spec)
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import yaml

from service import cluster, engines, events, progress, raylog, runlock, runs, signals
from service import data as data_lib
from service.compare.aggregate import aggregate
from service.grid import Setting, Trial, expand
from service.compare.plan import PLAN_FILE, StudyPlan, plan_processes, plan_workers, with_workers
from service.seeding import SeedPlan, Step, check_plan
from service.compare.tables import (TABLE_HEADER, TrialOutcome, csv_text, markdown, plot_comparison, settings_csv,
                                    table_rows, trial_row)
from service.compat import mlflow as compat_mlflow
from service.console import text_table
from service.engines import probe
from service.compare.watch import StudyWatch
from service.progress import StudyPace
from service.errors import EXIT_FAILED, EXIT_OK, BadInput, cause_line
from service.files import write_atomic
from service.report import files as run_files
from service.spec import CompareSpec, SpecError, dump_spec

Echo = Callable[[str], None]


def run(spec: CompareSpec, address: Optional[str] = None, verbose: bool = False, fresh: bool = False,
        echo: Echo = print, data_cache: Optional[Path] = None, quiet_trials: bool = False,
        command: Optional[str] = None) -> int:
    """Run the study; 0 when it completed (some trials may have failed), 1 when it failed or no
    trial finished. Raises a `BadInput` (a bad grid, bad data, an address nothing answers at,
    a folder another command holds) before anything starts. `quiet_trials`: a status line at
    most every 10 s instead of a line per trial epoch. The study holds OUTPUT/STUDY's lock
    (`runlock`, which covers its trial folders) for its whole life; `command` is recorded there.
    """
    started = time.perf_counter()
    if address:
        cluster.check_gcs_address(address)
    if spec.tracking is not None:
        from service import tracking

        tracking.check_available(spec.tracking)
    study_dir = (Path(spec.output) / spec.name).resolve()
    workers, why = plan_workers(spec)
    spec = with_workers(spec, workers)  # before the trials are made: it is part of their specs
    seeding = SeedPlan.of(spec)
    every = expand(spec, study_dir / "trials", seeds=list(seeding.seeds))  # all validated up front
    engines.check_available(*(trial.spec for trial in every))
    settings = _settings(every)
    check_plan(seeding, len(settings))
    # MLflow's settings (the study's tracker sets them) end with the study.
    with runlock.hold(study_dir, command, echo, also=("trials/*",)), compat_mlflow.settings_restored():
        _pin_data(every, echo, data_cache)
        if fresh and study_dir.exists():
            runlock.clear(study_dir)
        reused = count_finished(every)
        echo(f"{spec.name}: {len(settings)} setting(s) x {seeding.describe()}, {workers} worker(s) per trial"
             f"{f', {reused} already finished' if reused else ''} -> {study_dir}")
        runs.mark_started(study_dir, "compare")
        tracker = _tracker(spec, study_dir, echo)
        session = Session(address, verbose, echo, data_cache, StudyPlan(workers, why, *plan_processes(spec, every)))
        try:
            try:
                outcomes, step = _run_rounds(spec, seeding, every, study_dir, session, quiet_trials)
            except Exception:
                if signals.received() is None:
                    raise
                raise signals.Interrupted(signals.received()) from None  # it landed inside Ray's compiled code
        except BadInput:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever Ray or Tune raises ends the study in one line, marked failed
            progress.error(echo, f"plateau: the study failed: {cause_line(exc)}")
            runs.mark_failed(study_dir, cause_line(exc))
            if tracker is not None:
                tracker.finish(settings, "FAILED")
            return EXIT_FAILED
        except signals.Interrupted as exc:  # Ctrl-C, SIGTERM: what finished is kept, the same command resumes
            if tracker is not None:
                tracker.end("KILLED")  # the same command resumes the same MLflow runs
            exc.message = _interrupted(exc, spec, every, settings, session, study_dir, echo, command)
            raise
        except BaseException:
            if tracker is not None:
                tracker.end("KILLED")
            raise
        trials = [t for t in every if t.name in outcomes]
        n_ok = _write_results(spec, trials, settings, outcomes, study_dir, echo, step.line, session.plan)
        if tracker is not None:
            for t in trials:  # each trial's folder is written: its nested run gets its files
                tracker.trial(t.name, t.setting.values, t.seed, t.spec, outcomes[t.name])
            tracker.finish(settings, "FINISHED" if n_ok else "FAILED")
        progress.final(echo, f"{n_ok}/{len(trials)} trials finished in {time.perf_counter() - started:.0f}s"
                             f"{'; ' + step.line if step.line else ''}; baseline: {settings[0].label} -> "
                             f"{study_dir / 'comparison.md'}")
        if n_ok == 0:
            progress.error(echo, "plateau: no trial finished; see the errors above")
            runs.mark_failed(study_dir, "no trial finished")
            return EXIT_FAILED
        runs.mark_finished(study_dir, step.line)
        return EXIT_OK


def _interrupted(exc: signals.Interrupted, spec: CompareSpec, every: list[Trial], settings: list[Setting],
                 session: "Session", study_dir: Path, echo: Echo, command: Optional[str]) -> str:
    """After a signal: the trials that ended keep their folders (so the same command reuses the
    finished ones), the comparison files say they are partial, and one line says so."""
    ended = {name: outcome for name, outcome in session.ended.items()}
    trials = [t for t in every if t.name in ended]
    finished = sum(outcome.status == "ok" for outcome in ended.values())
    planned = len(every) if not SeedPlan.of(spec).sequential else f"at least {len(session.first_round)}"
    again = f"resume with: {command}" if command else "run the same command again to resume"
    line = (f"interrupted by {exc.name} after {finished} of {planned} trials finished; {again} "
            f"(the finished trials are reused)")
    if trials:
        partial = (f"**Partial**: the study was interrupted by {exc.name} after {finished} of {planned} trials "
                   f"finished; these tables hold only the trials that ended. Run the same command again to "
                   f"resume: the finished trials are reused.")
        _write_results(spec, trials, settings, ended, study_dir, echo, study_plan=None, partial=partial)
    return line


def _tracker(spec: CompareSpec, study_dir: Path, echo: Echo):
    """The study's parent MLflow run (tracking.StudyTracker), when the spec asks for one."""
    if spec.tracking is None:
        return None
    from service import tracking

    return tracking.StudyTracker.open(spec, study_dir, echo)


# ---------------------------------------------------------------------------------------------
# Rounds of trials


@dataclass
class Session:
    """Where the trials run, and how: held open across the rounds of a sequential study."""

    address: Optional[str]
    verbose: bool
    echo: Echo
    data_cache: Optional[Path]
    plan: StudyPlan      # how many trials at once, with how many workers (concurrency once Ray is up)
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    ray_open: bool = False
    embedded: bool = False   # the study started its Ray (one machine) rather than joining a cluster
    trained: int = 0   # trials trained (not reused) so far
    ended: dict = field(default_factory=dict)   # trial name -> outcome, as each trial ends (reused ones too)
    first_round: list = field(default_factory=list)   # the first round's trials


def _run_rounds(spec: CompareSpec, seeding: SeedPlan, every: list[Trial], study_dir: Path, session: Session,
                quiet_trials: bool) -> tuple[dict[str, TrialOutcome], Step]:
    """The first round's seeds, then (sequential seeding) one more seed per round until the seeding
    says stop; every trial name -> its outcome, and the seeding's last word."""
    seeds, outcomes = seeding.first_round, {}
    pace = StudyPace(0, 1)  # its concurrency is the plan's, once Ray is up
    with session.stack:
        while True:
            planned = [t for t in every if t.seed in seeds]
            pace.total = len(planned)
            watch = StudyWatch(planned, pace, quiet_trials)
            watch.outcomes = session.ended   # what ended is known if a signal ends the study mid-round
            session.first_round = session.first_round or planned
            outcomes.update(_run_round(spec, [t for t in planned if t.name not in outcomes], every, study_dir,
                                       session, watch))
            if not seeding.sequential:
                if not session.trained:
                    session.echo("every trial already finished; use --fresh to train them again")
                return outcomes, Step(True, "")
            records = aggregate([trial_row(t, outcomes[t.name]) for t in planned], [s.label for s in _settings(every)])
            step = seeding.after_round(records, len(seeds))
            session.echo(step.line)
            if step.stop:
                return outcomes, step
            seeds = [*seeds, step.next_seed]


def _settings(trials: list[Trial]) -> list[Setting]:
    return list({t.setting.index: t.setting for t in trials}.values())


def _run_round(spec: CompareSpec, trials: list[Trial], every: list[Trial], study_dir: Path, session: Session,
               watch: StudyWatch) -> dict[str, TrialOutcome]:
    """One round: trials an earlier run of the study finished are reused, the rest go to Tune."""
    outcomes = {}
    todo = []
    for t in trials:
        if (Path(t.spec.output) / t.name / "summary.json").exists():
            outcomes[t.name] = _finished(t)
            session.echo(watch.finished(t.name, outcomes[t.name]))
        else:
            todo.append(t)
    if not todo:
        return outcomes
    from service.compare.trials import run_tune, study_session, trial_resources  # Ray Tune: only when there is work

    if not session.ray_open:  # one Ray for every round; the plan's concurrency from what it reports
        ray_here = session.stack.enter_context(study_session(spec, every, session.address, session.verbose,
                                                             session.echo, study_dir / raylog.LOG_FILE))
        session.plan = session.plan.concurrency(spec, ray_here.resources, len(every),
                                                trial_cpus=trial_resources(ray_here.embedded).get("CPU", 0))
        session.embedded = ray_here.embedded
        session.echo(f"{spec.name}: {session.plan.line()}")
        run_files.write_json(study_dir / PLAN_FILE, session.plan.to_json())
        session.ray_open = True
    watch.pace.concurrency = session.plan.concurrent
    session.trained += len(todo)
    outcomes.update(run_tune(spec, todo, study_dir, session.address, session.verbose, session.echo,
                             session.data_cache, watch, concurrent=session.plan.concurrent,
                             embedded=session.embedded, warm=session.plan.warm))
    for t in todo:  # a trial Tune returned nothing for is a failed row, not a hole in the study
        outcomes.setdefault(t.name, TrialOutcome("failed", error="no result from Tune"))
    return outcomes


# ---------------------------------------------------------------------------------------------
# Before any trial starts


def _pin_data(trials: list[Trial], echo: Echo, data_cache: Optional[Path]) -> None:
    """Load each distinct data source once, before any trial (raises DataError), and pin the
    trials to what was found: "auto" becomes the source it resolved to, and a relative path
    becomes absolute (Tune runs each trial in its own working directory)."""
    resolved: dict[tuple, str] = {}
    shapes: dict[tuple, tuple] = {}
    tried: set[str] = set()
    for t in trials:
        # The layout too: a grid may vary the model, and with it what the data must be.
        key = (t.spec.data.source, t.spec.data.validation, data_lib.Layout.of(t.spec))
        if key not in resolved:
            splits = data_lib.load(key[0], key[1], warn=lambda m: echo(f"WARNING: {m}"), cache_dir=data_cache,
                                   layout=key[2])
            shapes[key] = (splits.x_train.shape[1:], splits.classes, str(splits.x_train.dtype))
            source = key[0]
            if source == "auto":
                source = splits.source
            elif Path(source).exists():
                source = str(Path(source).resolve())
            resolved[key] = source
        model = json.dumps([t.spec.training.engine, t.spec.model.model_dump(mode="json"), repr(key)], sort_keys=True)
        if t.spec.model.build is not None and model not in tried:  # each distinct user model, tried once
            tried.add(model)
            probe.check_model(t.spec, engines.ENGINES[t.spec.training.engine], *shapes[key])
        if resolved[key] != t.spec.data.source:
            t.spec = t.spec.model_copy(update={"data": t.spec.data.model_copy(update={"source": resolved[key]})})


def count_finished(trials: list[Trial]) -> int:
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
    return TrialOutcome("ok", summary, "", run_files.read_history(folder / "history.csv"),
                        run_files.read_decisions(folder / "decisions.jsonl"), reused=True)


# ---------------------------------------------------------------------------------------------
# After the trials


def _write_results(spec: CompareSpec, trials: list[Trial], settings: list[Setting], outcomes: dict,
                   study_dir: Path, echo: Echo, seeding_line: str = "", study_plan: Optional[StudyPlan] = None,
                   partial: str = "") -> int:
    """comparison.csv/.md/.png, settings.csv and the ranked table on the terminal; returns the
    trials that finished. `partial`: the study was interrupted; comparison.md says so first, and
    nothing is printed (the interrupted line is the study's last word)."""
    rows, curves = [], {s.label: [] for s in settings}
    for t in trials:
        outcome = outcomes.get(t.name) or TrialOutcome("failed", error="no result from Tune")
        if outcome.history and not outcome.reused:  # the trial's own folder, here on the driver's node
            folder = Path(t.spec.output) / t.name
            run_files.write_run(folder, t.spec, outcome.history, outcome.decisions, outcome.summary)
            events.write_history(folder / events.FOLDER, outcome.history, outcome.decisions, outcome.summary)
        row = trial_row(t, outcome)
        if outcome.status != "ok" and outcome.history:  # what it trained before it ended
            row["epochs_run"] = len(outcome.history)
            row["best_val_accuracy"] = max(r["val_accuracy"] for r in outcome.history)
        rows.append(row)
        if outcome.status == "ok":
            curves[t.setting.label].append(outcome.history)
    records = aggregate(rows, [s.label for s in settings])
    how_it_ran = f"Sequential seeding: {seeding_line}." if seeding_line else ""
    if study_plan is not None and study_plan.concurrent:  # how this run of the study ran its trials
        how_it_ran = f"{how_it_ran}\n\nHow the trials ran: {study_plan.line()}.".strip()
    write_atomic(study_dir / "comparison.csv", csv_text(rows, list(spec.grid)))
    write_atomic(study_dir / "settings.csv", settings_csv(records, settings, list(spec.grid)))
    text = markdown(spec, records, rows, settings, trials, how_it_ran)
    if partial:
        title, _, rest = text.partition("\n")
        text = f"{title} (partial)\n\n{partial}\n{rest}"
    write_atomic(study_dir / "comparison.md", text)
    plot_comparison(study_dir / "comparison.png", curves, title=f"{spec.name}{' (partial)' if partial else ''}",
                    rows=rows, baseline=settings[0].label)
    if partial:
        return sum(r["status"] == "ok" for r in rows)
    progress.final(echo, "")
    progress.final(echo, text_table(TABLE_HEADER, table_rows(records)))
    return sum(r["status"] == "ok" for r in rows)
