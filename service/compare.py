"""Ray Tune comparison of callback settings: a grid of settings x seeds, one train run per trial.

`run(spec)` expands a `CompareSpec` into trials, validates every trial's train spec and checks
the data before anything starts, runs the trials with Ray Tune (each trial is a function that
calls `train.run`, which builds a TensorflowTrainer and passes `TuneReportCallback` in its
RunConfig), prints one line per finished trial and a ranked table, and writes OUTPUT/STUDY/:

- ``comparison.csv``  one row per trial
- ``comparison.md``   one row per setting: mean ± std over seeds, ranked by mean test accuracy
- ``comparison.png``  val_accuracy per epoch (a line and a band per setting), each seed's LR
- ``trials/NAME/``    each trial's train-run folder (spec.yaml, history.csv, summary.json, ...)
- ``tune/``           Ray Tune's own bookkeeping

The grid
--------
``grid`` maps a dotted train-spec field to the list of values to try; the settings are the
cartesian product of the lists, in the order the fields are written. A value is applied with
the same rules as ``--set``: ``reduce_lr.factor: [0.1, 0.5]`` sets one field, a mapping
replaces a whole section (``reduce_lr: [{factor: 0.1, patience: 1}]``), and ``null`` turns a
section off (``reduce_lr: [null, {...}]``). Sections are applied before the fields inside
them, whatever the order they are written in, so a section value is the starting point that
the finer axes then vary. When a setting turns a section off, the axes inside that section
mean nothing: they are dropped from that setting and the duplicates collapse into one, so

    grid:
      reduce_lr: [null, {monitor: val_accuracy}]
      reduce_lr.factor: [0.1, 0.5]

gives three settings: ``reduce_lr=off``, ``reduce_lr.factor=0.1`` and ``reduce_lr.factor=0.5``.
An axis with a single value (``data.validation: [holdout]``) sets that field for every trial;
it is a column of comparison.csv but not part of the settings' names.

The baseline of "beats baseline" is the grid's FIRST setting (the first value of every
axis); put the reference arm first.

Each trial is named ``STUDY-SLUG-sSEED`` and trains with ``training.seed`` = the seed. A trial
folder that already holds a finished run of the same spec is not trained again (so an
interrupted study picks up where it stopped); one holding a different spec is an error until
``--fresh`` clears the study.

Ray: an embedded Ray is started with enough logical CPUs for max_concurrent_trials trials of
(1 for the trial's own process + its workers' CPUs), more than a laptop has cores if need be;
with an address (or inside a Ray job) the study joins that cluster. The trial folders are
written by the trial processes: on a multi-node cluster, point `output` at shared storage.
``scaling.num_workers: 0`` (Ray Train's in-process mode) cannot run inside a Tune trial and
is refused up front.

Example::

    spec = load_spec("jobs/seed-comparison.yaml", ["base.data.source=sample", "base.training.epochs=2"])
    exit_code = run(spec)
"""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import itertools
import json
import math
import os
import re
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import yaml
from pydantic import BaseModel

from service import data as data_lib
from service import report
from service.spec import CompareSpec, SpecError, TrainSpec, dump_spec, set_path, validate_train

# Fields a grid may not vary: the study sets them for every trial.
RESERVED = {
    "kind": "every trial is a train run",
    "name": "trial names are made from the study name, the setting and the seed",
    "output": "trials are written under OUTPUT/STUDY/trials",
    "training.seed": "list the seeds under `seeds:`",
}
CSV_FIXED = ["trial", "setting"]
CSV_RESULTS = ["seed", "status", "error", "epochs_run", "stop_epoch", "best_epoch", "lr_reductions",
               "lr_reduction_epochs", "best_val_accuracy", "test_accuracy", "test_error", "wall_seconds"]
METRIC, MODE = "val_accuracy", "max"


# ---------------------------------------------------------------------------------------------
# Grid expansion


@dataclass
class Setting:
    """One point of the grid: the values applied (field -> value, grid order) and its names."""

    index: int
    values: dict[str, Any]
    label: str  # human readable: reduce_lr.factor=0.2,reduce_lr.patience=2
    slug: str   # the same, fit for a file name: factor-0.2_patience-2
    columns: dict[str, str]  # grid field -> the value as shown in comparison.csv ("" if dropped)
    full: str = ""  # every value applied, one-value axes included (for error messages)


@dataclass
class Trial:
    setting: Setting
    seed: int
    name: str
    spec: TrainSpec


def _is_section(dotted: str) -> bool:
    """Whether `dotted` names a section of the train spec (reduce_lr, data, ...), not a value."""
    model: Any = TrainSpec
    for part in dotted.split("."):
        field_info = getattr(model, "model_fields", {}).get(part)
        if field_info is None:
            return False
        nested = [a for a in getattr(field_info.annotation, "__args__", (field_info.annotation,))
                  if isinstance(a, type) and issubclass(a, BaseModel)]
        model = nested[0] if nested else None
    return model is not None


def _render(value: Any, differing: Optional[list[str]] = None, section: bool = True) -> str:
    """A grid value for people: a null section -> off, a section -> on (or the keys that differ)."""
    if value is None:
        return "off" if section else "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict):
        if not differing:
            return "on"
        return "{" + ", ".join(f"{k}: {_render(value.get(k))}" for k in differing) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_render(v) for v in value) + "]"
    return str(value)


def _differing_keys(values: list[Any]) -> list[str]:
    """The keys whose values differ among an axis's mapping values (to tell them apart)."""
    dicts = [v for v in values if isinstance(v, dict)]
    keys: list[str] = []
    for d in dicts:
        keys += [k for k in d if k not in keys]
    return [k for k in keys if len({json.dumps(d.get(k), sort_keys=True) for d in dicts}) > 1]


def _short_names(fields: list[str]) -> dict[str, str]:
    """Each field's shortest dotted suffix that no other grid field ends with."""
    out = {}
    for f in fields:
        parts = f.split(".")
        for n in range(1, len(parts) + 1):
            suffix = ".".join(parts[-n:])
            if not any(o != f and (o == suffix or o.endswith("." + suffix)) for o in fields):
                break
        out[f] = suffix
    return out


def _under(field_name: str, section: str) -> bool:
    return field_name.startswith(section + ".")


def expand_settings(grid: dict[str, list[Any]]) -> list[Setting]:
    """The grid's settings in order, with axes under a section turned off dropped (see above)."""
    for f, values in grid.items():
        if f in RESERVED:
            raise SpecError(f"grid {f}: cannot be varied ({RESERVED[f]})")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", f):
            raise SpecError(f"grid {f!r}: not a dotted field name; write e.g. reduce_lr.patience")
        if not isinstance(values, list) or not values:
            raise SpecError(f"grid {f}: empty list; give at least one value, e.g. {f}: [1, 2]")
        seen = set()
        for v in values:
            key = json.dumps(v, sort_keys=True, default=str)
            if key in seen:
                raise SpecError(f"grid {f}: the value {_render(v)} is listed twice")
            seen.add(key)
    fields = list(grid)
    differing = {f: _differing_keys(grid[f]) for f in fields}
    short = _short_names(fields)
    settings: list[Setting] = []
    seen_settings: set[str] = set()
    for combo in itertools.product(*(grid[f] for f in fields)):
        values = dict(zip(fields, combo))
        off = [f for f, v in values.items() if v is None]
        values = {f: v for f, v in values.items() if not any(_under(f, s) for s in off)}
        key = json.dumps(values, sort_keys=True, default=str)
        if key in seen_settings:
            continue
        seen_settings.add(key)
        shown = {f: _render(v, differing[f], _is_section(f)) for f, v in values.items()}
        # A one-value axis is a constant of the study, and "reduce_lr=on" says nothing when
        # reduce_lr.factor=... follows it: neither tells settings apart, so neither is named.
        named = [f for f in values if len(grid[f]) > 1]
        parts = [f for f in named if not (shown[f] == "on" and any(_under(o, f) for o in named))]
        label = ",".join(f"{f}={shown[f]}" for f in parts) or "base"
        slug = "_".join(f"{short[f]}-{_slug(shown[f])}" for f in parts) or "base"
        full = ",".join(f"{f}={shown[f]}" for f in values)
        settings.append(Setting(len(settings), values, label, slug, {f: shown.get(f, "") for f in fields}, full))
    slugs = [s.slug for s in settings]
    for s in settings:
        if slugs.count(s.slug) > 1:
            s.slug = f"{s.slug}-{s.index + 1}"
    return settings


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-") or "x"


def apply_setting(base: dict, values: dict[str, Any]) -> dict:
    """`base` (a train spec as a dict) with a setting's values set, sections before their fields."""
    data = copy.deepcopy(base)
    for f in sorted(values, key=lambda f: f.count(".")):  # stable: grid order within a depth
        set_path(data, f, copy.deepcopy(values[f]))
    return data


def expand(spec: CompareSpec, trials_dir: Optional[Path] = None) -> list[Trial]:
    """Every trial of the study, each train spec validated; raises SpecError naming the setting."""
    if not isinstance(spec.base, TrainSpec):
        raise SpecError(f"base: {spec.base!r} was not loaded; load compare specs with load_spec")
    repeated = sorted({s for s in spec.seeds if spec.seeds.count(s) > 1})
    if repeated:
        raise SpecError(f"seeds: {', '.join(map(str, repeated))} listed twice; each seed is one trial per setting")
    base = spec.base.model_dump(mode="json")
    output = str(trials_dir if trials_dir is not None else Path(spec.output) / spec.name / "trials")
    trials = []
    for setting in expand_settings(spec.grid):
        data = apply_setting(base, setting.values)
        for seed in spec.seeds:
            data = dict(data, name=f"{spec.name}-{setting.slug}-s{seed}", output=output)
            data["training"] = dict(data.get("training") or {}, seed=seed)
            where = f"grid {setting.full}: " if spec.grid else "base: "
            train_spec = validate_train(data, where=where)
            if train_spec.scaling.num_workers == 0:
                # Measured: the worker loop then runs in the trial's own process, where Tune
                # refuses ray.train.get_context().
                raise SpecError(f"{where}scaling.num_workers: 0 (Ray Train's in-process local mode) "
                                f"cannot run inside a Tune trial; use 1 or more workers")
            trials.append(Trial(setting, seed, train_spec.name, train_spec))
    return trials


# ---------------------------------------------------------------------------------------------
# Aggregates (pure; unit tested on handcrafted rows)


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
    baseline's for the same seed, out of `compared` seeds where both finished.
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
        out.append(rec)
    ranked = sorted(out, key=lambda r: (r["test_accuracy_mean"] is None, -(r["test_accuracy_mean"] or 0.0),
                                        r["position"]))
    for rank, rec in enumerate(ranked, 1):
        rec["rank"] = rank
    return ranked


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


# ---------------------------------------------------------------------------------------------
# Rows and files


def trial_row(trial: Trial, status: str, summary: Optional[dict], error: Optional[str]) -> dict:
    s = summary or {}
    reductions = s.get("lr_reductions") or []
    return {
        "trial": trial.name,
        "setting": trial.setting.label,
        **trial.setting.columns,
        "seed": trial.seed,
        "status": status,
        "error": error or "",
        "epochs_run": s.get("epochs_run"),
        "stop_epoch": s.get("stop_epoch"),
        "best_epoch": s.get("best_epoch"),
        "lr_reductions": len(reductions) if summary else None,
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


# ---------------------------------------------------------------------------------------------
# The Tune side


def _tune_callback():
    """TuneReportCallback, minus what a Tune result should not carry: the final test report
    (it has no val_accuracy, which the scheduler needs in every result; the trial returns the
    test metrics itself) and the per-rank decision record (it is in decisions.jsonl)."""
    from ray.tune.integration.ray_train import TuneReportCallback

    class EpochsToTune(TuneReportCallback):
        def after_report(self, run_context, metrics, checkpoint):
            if metrics and metrics[0].get("final"):
                return
            slim = [{k: v for k, v in m.items() if k != "decision"} for m in metrics]
            super().after_report(run_context, slim, checkpoint)

    return EpochsToTune()


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}"[:300]


def run_trial(config: dict) -> dict:
    """A Tune trial: one train run. Returns the final result (status, summary, history)."""
    from service import train

    trial = config["trial"]
    spec = TrainSpec.model_validate(trial["spec"])
    prefix = f"[{spec.name}] "
    echo = (lambda m: print(prefix + m, flush=True)) if trial.get("verbose") else (lambda m: None)
    try:
        result = train.run(spec, verbose=bool(trial.get("verbose")), echo=echo, callbacks=[_tune_callback()])
    except Exception as exc:  # a trial's failure is its row, not the study's end
        return {"status": "failed", "error": _first_line(exc), METRIC: float("nan")}
    history = result.history
    if not result.ok:
        return {"status": "failed", "error": result.error, "history": history, METRIC: float("nan")}
    summary = result.summary
    return {"status": "ok", "error": "", "summary": summary, "history": history,
            METRIC: summary.get("best_val_accuracy") if summary.get("best_val_accuracy") is not None
            else float("nan")}


@contextlib.contextmanager
def _tune_output(verbose: bool):
    """Tune's own console tables only with --verbose: its new output engine prints the
    experiment box whatever the verbosity, the legacy one stays silent at verbose=0."""
    if verbose:
        yield
        return
    saved = os.environ.get("RAY_AIR_NEW_OUTPUT")
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = saved


def _trial_dirname(trial) -> str:
    return trial.config["trial"]["spec"]["name"]


def _outcome(trial: Trial, metrics: Optional[dict], error: Optional[BaseException]) -> tuple[str, Optional[dict], str, list]:
    """(status, summary, error line, history) from what Tune kept of a trial."""
    metrics = metrics or {}
    status = metrics.get("status")
    if status == "ok":
        return "ok", metrics.get("summary"), "", metrics.get("history") or []
    if status == "failed":
        return "failed", None, metrics.get("error") or "failed", metrics.get("history") or []
    if error is not None:
        return "failed", None, _first_line(error), []
    # Ended without a final result: the scheduler (ASHA) stopped it, or the study was interrupted.
    epochs = metrics.get("training_iteration", 0)
    return "stopped", None, f"stopped after {epochs} epoch(s) (by the scheduler, or the study was interrupted)", []


def live_line(done: int, total: int, trial: Trial, status: str, summary: Optional[dict], error: str) -> str:
    head = f"[{done:>{len(str(total))}}/{total}] {trial.setting.label}  seed {trial.seed}"
    if status != "ok":
        return f"{head}  {status.upper()}: {error}"
    s = summary or {}
    stop = s.get("stop_epoch") if s.get("stopped_early") else "-"
    acc = s.get("test_accuracy")
    line = f"{head}  epochs {s.get('epochs_run')}  stop {stop}"
    if acc is not None:
        line += f"  test_accuracy {acc:.4f}"
    return f"{line}  {s.get('wall_seconds') or 0:.1f}s"


# ---------------------------------------------------------------------------------------------
# The study


def _check_data(trials: list[Trial], echo: Callable[[str], None]) -> None:
    """Load each distinct data source once, before any trial (raises DataError), and pin the
    trials to what was found: "auto" becomes the source it resolved to, and a relative path
    becomes absolute (Tune runs each trial in its own working directory)."""
    resolved: dict[tuple[str, str], str] = {}
    for t in trials:
        key = (t.spec.data.source, t.spec.data.validation)
        if key not in resolved:
            splits = data_lib.load(key[0], key[1], warn=lambda m: echo(f"WARNING: {m}"))
            source = key[0]
            if source == "auto":
                source = splits.source
            elif Path(source).exists():
                source = str(Path(source).resolve())
            resolved[key] = source
        if resolved[key] != t.spec.data.source:
            t.spec = t.spec.model_copy(update={"data": t.spec.data.model_copy(update={"source": resolved[key]})})


def _check_earlier(trials: list[Trial]) -> int:
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


def _run_tune(spec: CompareSpec, trials: list[Trial], study_dir: Path, address: Optional[str],
              verbose: bool, echo: Callable[[str], None]) -> dict[str, tuple]:
    """Run the trials on Ray Tune; trial name -> (status, summary, error, history).

    Raises whatever keeps the study itself from running (Ray, Tune)."""
    import ray
    from ray import tune

    from service import train

    per_trial = max(1 + t.spec.workers * t.spec.scaling.cpus_per_worker for t in trials)
    cpus = max(os.cpu_count() or 1, math.ceil(spec.max_concurrent_trials * per_trial))
    by_name = {t.name: t for t in trials}
    done = [0]

    class LiveLines(tune.Callback):
        """One line per finished trial, printed by the study's driver as Tune reports it."""

        def _line(self, trial, error=None):
            t = by_name.get(trial.config["trial"]["spec"]["name"])
            if t is None:
                return
            done[0] += 1
            status, summary, message, _ = _outcome(t, trial.last_result, error)
            echo(live_line(done[0], len(trials), t, status, summary, message))

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._line(trial)

        def on_trial_error(self, iteration, trials, trial, **info):
            self._line(trial, error=RuntimeError("the trial's process died"))

    we_started = train.start_ray(address, cpus, verbose)
    try:
        scheduler = None
        if spec.scheduler == "asha":
            scheduler = tune.schedulers.ASHAScheduler(
                time_attr="training_iteration", grace_period=1,
                max_t=max(t.spec.training.epochs for t in trials) + 2)  # never cut the final report
        space = [{"spec": t.spec.model_dump(mode="json"), "verbose": verbose} for t in trials]
        tuner = tune.Tuner(
            # The trial's own process takes one CPU; its Ray Train workers reserve theirs in
            # the placement group the trainer makes for them.
            tune.with_resources(run_trial, {"CPU": 1}),
            param_space={"trial": tune.grid_search(space)},
            tune_config=tune.TuneConfig(
                metric=METRIC, mode=MODE, scheduler=scheduler,
                max_concurrent_trials=spec.max_concurrent_trials,
                trial_dirname_creator=_trial_dirname,
            ),
            run_config=tune.RunConfig(
                name=spec.name, storage_path=str(study_dir / "tune"),
                callbacks=[LiveLines()], verbose=1 if verbose else 0,
            ),
        )
        if (study_dir / "tune" / spec.name).exists():  # Tune's bookkeeping of an earlier study run
            shutil.rmtree(study_dir / "tune" / spec.name)
        with _tune_output(verbose):
            results = tuner.fit()
        outcomes = {}
        for result in results:
            name = (result.config or {}).get("trial", {}).get("spec", {}).get("name")
            if name in by_name:
                outcomes[name] = _outcome(by_name[name], result.metrics, result.error)
        return outcomes
    finally:
        if we_started:
            ray.shutdown()


def _finished(trial: Trial) -> tuple:
    folder = Path(trial.spec.output) / trial.name
    summary = json.loads((folder / "summary.json").read_text())
    return "ok", summary, "", report.read_history(folder / "history.csv")


def run(spec: CompareSpec, address: Optional[str] = None, verbose: bool = False, fresh: bool = False,
        echo: Callable[[str], None] = print) -> int:
    """Run the study; 0 when it completed (some trials may have failed), 1 when it failed or
    no trial finished. Raises SpecError (bad grid), DataError (bad data) and train.AddressError
    (an address nothing answers at) before anything starts.
    """
    started = time.perf_counter()
    if address:
        from service.train import check_address

        check_address(address)
    study_dir = (Path(spec.output) / spec.name).resolve()
    trials = expand(spec, study_dir / "trials")
    settings = list({t.setting.index: t.setting for t in trials}.values())
    _check_data(trials, echo)
    if fresh and study_dir.exists():
        shutil.rmtree(study_dir)
    reused = _check_earlier(trials)
    echo(f"{spec.name}: {len(settings)} setting(s) x {len(spec.seeds)} seed(s) = {len(trials)} trials, "
         f"up to {spec.max_concurrent_trials} at a time"
         f"{f', {reused} already finished' if reused else ''} -> {study_dir}")

    if reused == len(trials):  # nothing to train: no Ray needed
        echo("every trial already finished; use --fresh to train them again")
        outcomes = {t.name: _finished(t) for t in trials}
        for i, t in enumerate(trials, 1):
            echo(live_line(i, len(trials), t, *outcomes[t.name][:3]))
    else:
        try:
            outcomes = _run_tune(spec, trials, study_dir, address, verbose, echo)
        except Exception as exc:
            echo(f"plateau: the study failed: {_first_line(exc)}")
            return 1

    rows, curves = [], {s.label: [] for s in settings}
    for t in trials:
        status, summary, error, history = outcomes.get(t.name, ("failed", None, "no result from Tune", []))
        folder = Path(t.spec.output) / t.name
        row = trial_row(t, status, summary, error)
        if status != "ok" and (folder / "history.csv").exists():  # what it trained before it ended
            partial = report.read_history(folder / "history.csv")
            if partial:
                row["epochs_run"] = len(partial)
                row["best_val_accuracy"] = max(r["val_accuracy"] for r in partial)
        rows.append(row)
        if status == "ok":
            curves[t.setting.label].append(history)
    records = aggregate(rows, [s.label for s in settings])
    report.write_atomic(study_dir / "comparison.csv", csv_text(rows, list(spec.grid)))
    report.write_atomic(study_dir / "comparison.md", markdown(spec, records, rows, settings, trials))
    plot_comparison(study_dir / "comparison.png", curves, title=spec.name)

    echo("")
    echo(text_table(TABLE_HEADER, table_rows(records)))
    n_ok = sum(r["status"] == "ok" for r in rows)
    echo(f"{n_ok}/{len(rows)} trials finished in {time.perf_counter() - started:.0f}s; baseline: "
         f"{settings[0].label} -> {study_dir / 'comparison.md'}")
    if n_ok == 0:
        echo("plateau: no trial finished; see the errors above")
        return 1
    return 0
