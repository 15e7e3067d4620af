"""`plateau compare` (service/compare/).

Fast tests: grid expansion (cartesian order, null sections, whole-section values), trial
naming, bad grids failing before anything starts with the setting named, the aggregate maths
on handcrafted rows, and the rendered files. One slow test runs a real 2x2 study with Ray Tune
and TensorFlow on the bundled sample, through the CLI, and checks the files it writes.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from service import cli, compare
from service.report import files as run_files
from service.compare import aggregate, stats, tables
from service import grid as grid_lib
from service.spec import CompareSpec, SpecError, load_spec
from tests.support.engines import NEEDS_JAX
from tests.support.limits import COMMAND_S, PROGRAM_S, RUN_S

# The seed specs use the legacy `epsilon` on purpose; its warning is not what these tests check.
pytestmark = pytest.mark.filterwarnings("ignore::service.spec.SpecWarning")
PROJECT_ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"

BASE = {
    "name": "b",
    "data": {"source": "sample", "validation": "test"},
    "training": {"epochs": 2},
    "scaling": {"num_workers": 1},
    "early_stopping": {"monitor": "val_accuracy", "patience": 2},
    "reduce_lr": {"monitor": "val_accuracy", "factor": 0.1, "patience": 1},
}


def study(grid: dict, seeds=(7,), **extra) -> CompareSpec:
    return CompareSpec.model_validate({"kind": "compare", "name": "study", "base": BASE, "grid": grid,
                                       "seeds": list(seeds or [7]), **extra})


def labels(grid: dict) -> list[str]:
    return [s.label for s in grid_lib.expand_settings(grid)]


# --- grid expansion and naming ------------------------------------------------------------------


def test_cartesian_product_in_grid_order_times_seeds(tmp_path):
    spec = study({"reduce_lr.factor": [0.1, 0.5], "early_stopping.patience": [2, 4]}, seeds=[7, 8])
    trials = grid_lib.expand(spec, tmp_path / "trials")
    assert [(t.setting.label, t.seed) for t in trials] == [
        ("reduce_lr.factor=0.1,early_stopping.patience=2", 7), ("reduce_lr.factor=0.1,early_stopping.patience=2", 8),
        ("reduce_lr.factor=0.1,early_stopping.patience=4", 7), ("reduce_lr.factor=0.1,early_stopping.patience=4", 8),
        ("reduce_lr.factor=0.5,early_stopping.patience=2", 7), ("reduce_lr.factor=0.5,early_stopping.patience=2", 8),
        ("reduce_lr.factor=0.5,early_stopping.patience=4", 7), ("reduce_lr.factor=0.5,early_stopping.patience=4", 8),
    ]
    last = trials[-1]
    assert last.name == "study-factor-0.5_patience-4-s8"
    assert last.spec.name == last.name
    assert last.spec.training.seed == 8
    assert last.spec.reduce_lr.factor == 0.5 and last.spec.reduce_lr.patience == 1  # the rest: the base's
    assert last.spec.early_stopping.patience == 4
    assert last.spec.output == str(tmp_path / "trials")
    assert len({t.name for t in trials}) == len(trials)
    # The default trial folder: OUTPUT/STUDY/trials
    assert grid_lib.expand(spec)[0].spec.output == str(Path("results") / "study" / "trials")


def test_null_turns_a_section_off_and_drops_the_axes_inside_it():
    grid = {"reduce_lr": [None, {"monitor": "val_accuracy"}], "reduce_lr.factor": [0.1, 0.5],
            "reduce_lr.patience": [1, 2]}
    assert labels(grid) == [
        "reduce_lr=off",
        "reduce_lr.factor=0.1,reduce_lr.patience=1", "reduce_lr.factor=0.1,reduce_lr.patience=2",
        "reduce_lr.factor=0.5,reduce_lr.patience=1", "reduce_lr.factor=0.5,reduce_lr.patience=2",
    ]
    trials = grid_lib.expand(study(grid))
    assert trials[0].spec.reduce_lr is None
    assert trials[0].setting.columns == {"reduce_lr": "off", "reduce_lr.factor": "", "reduce_lr.patience": ""}
    # The section value is the starting point; the axes then set its fields (base's reduce_lr replaced).
    on = trials[-1].spec.reduce_lr
    assert (on.monitor, on.factor, on.patience, on.min_delta) == ("val_accuracy", 0.5, 2, 1e-4)
    assert trials[0].name == "study-reduce_lr-off-s7"
    assert trials[-1].name == "study-factor-0.5_patience-2-s7"


def test_a_mapping_replaces_the_whole_section_and_sections_go_before_their_fields():
    # Written field-first on purpose: the section is still applied first.
    spec = study({"reduce_lr.factor": [0.2], "reduce_lr": [{"patience": 3}]})
    (trial,) = grid_lib.expand(spec)
    assert trial.spec.reduce_lr.factor == 0.2
    assert trial.spec.reduce_lr.patience == 3
    assert trial.spec.reduce_lr.monitor == "val_loss"  # replaced, not merged with the base's val_accuracy
    # One-value axes are constants of the study: not in the name.
    assert trial.setting.label == "base" and trial.name == "study-base-s7"


def test_mapping_values_are_named_by_the_keys_that_differ():
    assert labels({"early_stopping": [None, {"patience": 1}, {"patience": 2}]}) == [
        "early_stopping=off", "early_stopping={patience: 1}", "early_stopping={patience: 2}"]
    assert labels({"reduce_lr": [None, {"factor": 0.1, "patience": 1}]}) == ["reduce_lr=off", "reduce_lr=on"]
    # "on" is left out only where a named axis inside the section follows it.
    assert labels({"reduce_lr": [None, {"patience": 1}], "reduce_lr.factor": [0.2]}) == ["reduce_lr=off", "reduce_lr=on"]
    # A null plain field is not "off".
    assert labels({"debug.fail_at_epoch": [None, 1]}) == ["debug.fail_at_epoch=null", "debug.fail_at_epoch=1"]


def test_ambiguous_leaf_names_keep_their_section_in_the_slug():
    settings = grid_lib.expand_settings({"reduce_lr.patience": [1], "early_stopping.patience": [2, 4],
                                        "model.learning_rate": [0.01, 0.001]})
    assert settings[0].slug == "early_stopping.patience-2_learning_rate-0.01"
    assert settings[-1].label == "early_stopping.patience=4,model.learning_rate=0.001"


@pytest.mark.parametrize("grid, message", [
    ({"reduce_lr.patiance": [1, 2]},
     "grid reduce_lr.patiance=1: reduce_lr.patiance: unknown field; did you mean 'patience'?"),
    ({"reduce_lr.factor": []}, "grid reduce_lr.factor: empty list"),
    ({"reduce_lr.factor": [0.5, 1.5]}, "grid reduce_lr.factor=1.5: reduce_lr.factor: Input should be less than 1"),
    ({"model.learning_rate": [0.1], "reduce_lr": [None, {"monitor": "val_acuracy"}]},
     "grid model.learning_rate=0.1,reduce_lr=on: reduce_lr.monitor: the model does not produce 'val_acuracy'"),
    ({"training.seed": [1, 2]}, "grid training.seed: cannot be varied (list the seeds under `seeds:`)"),
    ({"name": ["a"]}, "grid name: cannot be varied"),
    ({"reduce_lr.factor": [0.1, 0.1]}, "grid reduce_lr.factor: the value 0.1 is listed twice"),
    ({"scaling.num_workers": [1, 0]}, "grid scaling.num_workers=0: scaling.num_workers: 0 (Ray Train's in-process"),
    ({"scaling.num_workers": [201]}, "grid scaling.num_workers=201: spec: training.batch_size 200 is smaller than the 201 workers"),
])
def test_a_bad_grid_names_the_setting(grid, message):
    with pytest.raises(SpecError) as err:
        grid_lib.expand(study(grid))
    assert str(err.value).startswith(message), str(err.value)
    assert "\n" not in str(err.value)


def test_a_seed_listed_twice_is_refused():
    with pytest.raises(SpecError, match="seeds: 7 listed twice"):
        grid_lib.expand(study({}, seeds=[7, 8, 7]))


def test_the_job_files_expand_as_documented():
    seed = load_spec(PROJECT_ROOT / "jobs" / "seed-comparison.yaml")
    trials = grid_lib.expand(seed)
    assert seed.base.name == "seed-reduce-lr"
    assert seed.max_concurrent_trials == "auto" and seed.workers_per_trial == "auto"  # planned from Ray
    assert [(t.setting.label, t.seed) for t in trials] == [
        *(("reduce_lr=off", s) for s in range(7, 13)), *(("reduce_lr=on", s) for s in range(7, 13))]
    assert all(t.spec.data.validation == "test" and t.spec.early_stopping.patience == 2 for t in trials)
    assert trials[0].spec.reduce_lr is None
    assert trials[-1].spec.reduce_lr == seed.base.reduce_lr  # the seed's ReduceLROnPlateau
    assert trials[-1].name == "seed-comparison-reduce_lr-on-s12"

    wide = load_spec(PROJECT_ROOT / "jobs" / "compare-callbacks.yaml")
    trials = grid_lib.expand(wide)
    settings = list(dict.fromkeys(t.setting.label for t in trials))
    assert len(settings) == 20 and len(trials) == 60
    assert settings[0] == "reduce_lr=off,early_stopping.patience=2"  # the baseline
    assert "reduce_lr.factor=0.2,reduce_lr.patience=3,early_stopping.patience=4" in settings
    assert all(t.spec.data.validation == "holdout" for t in trials)
    assert {t.spec.reduce_lr.factor for t in trials if t.spec.reduce_lr} == {0.1, 0.2, 0.5}


def test_overrides_change_the_base_file_instead_of_replacing_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the base path is read relative to the compare spec's folder
    spec = load_spec(PROJECT_ROOT / "jobs" / "seed-comparison.yaml",
                     ["base.data.source=sample", "base.training.epochs=2", "seeds=[7]"])
    assert spec.base.name == "seed-reduce-lr"
    assert spec.base.reduce_lr is not None and spec.base.reduce_lr.min_delta == 1e-4
    assert (spec.base.data.source, spec.base.training.epochs, spec.seeds) == ("sample", 2, [7])


# --- aggregates and files -----------------------------------------------------------------------


def row(setting, seed, acc, status="ok", best=None, epochs=5):
    ok = status == "ok"
    return {"trial": f"t-{setting}-{seed}", "setting": setting, "seed": seed, "status": status,
            "error": "" if ok else "boom", "test_accuracy": acc if ok else None,
            "test_error": (1 - acc) if ok else None, "best_val_accuracy": (best or acc) if ok else None,
            "epochs_run": epochs if ok else None}


ROWS = [
    row("A", 7, 0.90, epochs=4), row("A", 8, 0.92, epochs=6), row("A", 9, 0.94, epochs=5),
    row("B", 7, 0.91), row("B", 8, 0.93), row("B", 9, 0.93),
    row("C", 7, 0.99), row("C", 8, 0.0, status="failed"), row("C", 9, 0.0, status="stopped"),
    row("D", 7, 0.0, status="failed"),
]


def test_aggregate_maths_on_handcrafted_rows():
    records = {r.setting: r for r in aggregate.aggregate(ROWS, ["A", "B", "C", "D"])}
    a, b, c, d = records["A"], records["B"], records["C"], records["D"]
    assert a.test_accuracy_mean == pytest.approx(0.92)
    assert a.test_accuracy_sd == pytest.approx(statistics.stdev([0.90, 0.92, 0.94]))  # sample sd
    assert a.test_error_mean == pytest.approx(0.08)
    assert a.epochs_run_mean == pytest.approx(5.0) and a.epochs_run_sd == pytest.approx(1.0)
    assert b.test_accuracy_mean == pytest.approx((0.91 + 0.93 + 0.93) / 3)
    # Seed by seed against the first setting: B wins on 7 and 8, loses on 9.
    assert a.baseline and not b.baseline
    assert (b.beats, b.compared) == (2, 3)
    # Failed and stopped trials count in n, not in the means; one finished seed has no sd.
    assert (c.n, c.n_ok, c.test_accuracy_mean, c.test_accuracy_sd) == (3, 1, 0.99, None)
    assert (c.beats, c.compared) == (1, 1)
    assert (d.n_ok, d.test_accuracy_mean, d.compared) == (0, None, 0)
    # Ranked by mean test accuracy; a setting with nothing finished goes last.
    assert [r.setting for r in aggregate.aggregate(ROWS, ["A", "B", "C", "D"])] == ["C", "B", "A", "D"]
    assert [records[s].rank for s in "CBAD"] == [1, 2, 3, 4]


def test_markdown_and_csv_carry_the_aggregates():
    settings = grid_lib.expand_settings({"x.y": ["A", "B", "C", "D"]})
    spec = study({})
    records = aggregate.aggregate(ROWS, ["A", "B", "C", "D"])
    text = tables.markdown(spec, records, ROWS, settings)
    table = {cells[1]: cells for cells in _md_rows(text)}
    assert table["A"][3] == "0.9200 ± 0.0200"
    assert table["A"][4] == "8.00% ± 2.00%"
    assert table["A"][6] == "5.0 ± 1.0"
    assert table["A"][7] == "baseline" and table["B"][7] == "2/3"
    assert table["C"][2] == "1/3" and table["C"][3] == "0.9900"  # one seed: no ±
    assert table["D"][3] == "–"
    assert [cells[1] for cells in _md_rows(text)] == ["C", "B", "A", "D"]
    assert "grid's first setting, `x.y=A`" in text and "- `t-C-8` (C, seed 8): failed: boom" in text

    out = list(csv.DictReader(io.StringIO(tables.csv_text(ROWS, ["x.y"]))))
    assert len(out) == len(ROWS)
    assert list(out[0])[:4] == ["trial", "setting", "x.y", "seed"]
    assert float(out[0]["test_accuracy"]) == 0.90 and out[7]["test_accuracy"] == ""


def test_plot_is_a_png_with_uneven_histories(tmp_path):
    def hist(n, lr):
        return [{"epoch": e, "val_accuracy": 0.8 + 0.01 * e, "lr": lr / (e // 2 + 1)} for e in range(1, n + 1)]

    tables.plot_comparison(tmp_path / "c.png", {"a": [hist(3, 0.01), hist(5, 0.01)], "b": [hist(4, 0.1)], "c": []})
    assert (tmp_path / "c.png").read_bytes().startswith(PNG)
    seeds = [row("a", 7, 0.9), row("a", 8, 0.91), row("b", 7, 0.92), row("b", 8, 0.0, status="failed"),
             row("c", 7, 0.0, status="failed")]
    tables.plot_comparison(tmp_path / "d.png", {"a": [hist(3, 0.01)], "b": [hist(4, 0.1)], "c": []}, rows=seeds,
                           baseline="a")
    assert (tmp_path / "d.png").read_bytes().startswith(PNG)
    # The tick of a setting carries its paired difference and, from two pairs on, the interval
    acc = {("a", 7): 0.9, ("a", 8): 0.91, ("b", 7): 0.92, ("b", 8): 0.93}
    assert tables._seed_label("a", "a", acc) == "a\n(baseline)"
    assert tables._seed_label("b", "a", acc) == "b\n+0.0200 [+0.0200, +0.0200]"
    assert tables._seed_label("b", "a", {("a", 7): 0.9, ("b", 7): 0.89}) == "b\n-0.0100"


def test_a_trial_folder_holding_another_spec_stops_the_study_before_it_starts(tmp_path):
    spec = study({"reduce_lr.factor": [0.1, 0.2]}, output=str(tmp_path))
    folder = tmp_path / "study" / "trials" / "study-factor-0.1-s7"
    folder.mkdir(parents=True)
    (folder / "spec.yaml").write_text("name: something else\n")
    with pytest.raises(SpecError, match="holds a run of a different spec; use --fresh"):
        compare.run(spec, echo=lambda m: None)


def test_cli_bad_grid_and_bad_data_exit_2_with_one_line(tmp_path, capsys, monkeypatch):
    # main() sets these process-wide; keep them to this test.
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    path = tmp_path / "c.yaml"
    path.write_text(f"kind: compare\nname: s\nbase: {PROJECT_ROOT / 'jobs' / 'seed-reduce-lr.yaml'}\n"
                    "grid:\n  reduce_lr.factor: [0.1, 1.5]\n")
    assert cli.main(["compare", str(path), "--output", str(tmp_path)]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if not ln.startswith("warning: ")]
    assert err == ["plateau: grid reduce_lr.factor=1.5: reduce_lr.factor: Input should be less than 1 (got 1.5)"]

    assert cli.main(["compare", str(path), "--set", "grid={reduce_lr.factor: [0.2]}",
                     "--data", str(tmp_path / "missing.npz"), "--output", str(tmp_path)]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if not ln.startswith("warning: ")]
    assert len(err) == 1 and err[0].startswith("plateau: ") and "missing.npz" in err[0]
    assert not (tmp_path / "s").exists()


# --- a real study -------------------------------------------------------------------------------


def _md_rows(text: str) -> list[list[str]]:
    lines = [ln for ln in text.splitlines() if ln.startswith("| ")]
    return [[c.strip() for c in ln.strip("|").split(" | ")] for ln in lines[1:]]


def _pm(values: list[float], fmt: str, scale: float = 1.0, unit: str = "") -> str:
    text = f"{statistics.fmean(values) * scale:{fmt}}{unit}"
    return text if len(values) < 2 else f"{text} ± {statistics.stdev(values) * scale:{fmt}}{unit}"


@pytest.mark.slow
# keras_jax's study is heavy (70 s on 2 cores): its trials are train runs, which the default suite covers
@pytest.mark.parametrize("engine", ["tf_keras", pytest.param("keras_jax", marks=[NEEDS_JAX, pytest.mark.heavy])])
def test_a_2x2_study_on_the_sample(tmp_path, engine):
    """Ray Tune over 4 trials (1 worker, 2 epochs each), through the CLI as a user runs it, on each engine."""
    spec = tmp_path / "study.yaml"
    spec.write_text(
        "kind: compare\nname: itest\n"
        f"base: {PROJECT_ROOT / 'jobs' / 'seed-reduce-lr.yaml'}\n"
        "grid:\n"
        # min_delta 1 can never be met: the LR halves at every epoch without a big enough gain.
        "  reduce_lr: [null, {monitor: val_accuracy, factor: 0.5, patience: 0, min_delta: 1.0}]\n"
        "  model.learning_rate: [0.01, 0.05]\n"
        "seeds: [7]\n")
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(home), PYTHONUNBUFFERED="1", RAY_USAGE_STATS_ENABLED="0")
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "service.cli", "compare", str(spec), "--data", "sample", "--workers", "1",
            "--epochs", "2", "--output", str(out), "--set", f"training.engine={engine}"]
    started = time.monotonic()
    proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=RUN_S)
    took = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr

    root = out / "itest"
    rows = list(csv.DictReader((root / "comparison.csv").open()))
    assert len(rows) == 4
    assert {r["status"] for r in rows} == {"ok"}
    assert [(r["reduce_lr"], r["model.learning_rate"]) for r in rows] == [
        ("off", "0.01"), ("off", "0.05"), ("on", "0.01"), ("on", "0.05")]
    for r in rows:
        summary = (root / "trials" / r["trial"] / "summary.json")
        assert summary.exists(), r["trial"]
        s = json.loads(summary.read_text())
        assert s["test_accuracy"] == float(r["test_accuracy"]) and s["epochs_run"] == int(r["epochs_run"]) == 2
        reduced = r["reduce_lr"] == "on"
        assert (int(r["lr_reductions"]), r["lr_reduction_epochs"]) == ((1, "2") if reduced else (0, ""))

    _check_progress_lines(proc.stdout, root, rows)
    _check_paired_files(root, rows)
    _check_trial_events(root, rows)

    md = (root / "comparison.md").read_text()
    table = _md_rows(md)
    assert len(table) == 4
    by_setting: dict[str, list[dict]] = {}
    for r in rows:
        by_setting.setdefault(r["setting"], []).append(r)
    base_acc = {r["seed"]: float(r["test_accuracy"]) for r in by_setting[rows[0]["setting"]]}
    means = []
    for cells in table:
        mine = by_setting[cells[1]]
        acc = [float(r["test_accuracy"]) for r in mine]
        means.append(statistics.fmean(acc))
        assert cells[2] == f"{len(mine)}/{len(mine)}"
        assert cells[3] == _pm(acc, ".4f")
        assert cells[4] == _pm([float(r["test_error"]) for r in mine], ".2f", 100.0, "%")
        assert cells[5] == _pm([float(r["best_val_accuracy"]) for r in mine], ".4f")
        assert cells[6] == _pm([float(r["epochs_run"]) for r in mine], ".1f")
        if cells[1] == rows[0]["setting"]:
            assert cells[7] == "baseline"
        else:
            wins = sum(float(r["test_accuracy"]) > base_acc[r["seed"]] for r in mine)
            assert cells[7] == f"{wins}/{len(mine)}"
    assert means == sorted(means, reverse=True)
    assert (root / "comparison.png").read_bytes().startswith(PNG)
    index = subprocess.run([sys.executable, "-m", "service.cli", "runs", str(out), "--json"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=COMMAND_S)
    (listed,) = json.loads(index.stdout)
    assert (listed["name"], listed["kind"], listed["status"], listed["trials"], listed["trials_ok"]) == \
        ("itest", "compare", "finished", 4, 4)
    print(f"study took {took:.0f}s")

    # Again, without --fresh: the finished trials are reused, not trained again.
    again = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=PROGRAM_S)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "4 already finished" in again.stdout
    assert list(csv.DictReader((root / "comparison.csv").open())) == rows


def _check_progress_lines(stdout: str, root: Path, rows: list[dict]) -> None:
    """A line per trial epoch saying what its history.csv holds (k/N in the grid's order), and a
    line per finished trial with the study's progress."""
    finished = [ln for ln in stdout.splitlines() if re.match(r"\[\d/4\] .*test_accuracy", ln)]
    assert len(finished) == 4, stdout
    assert [re.search(r"\| study: (\d)/4 trials done", ln).group(1) for ln in finished] == ["1", "2", "3", "4"]
    epoch_lines = [re.fullmatch(r"\[(\d)/4\] (\S+)  seed 7  epoch (\d)/2  val_accuracy (\d\.\d{4})  lr (\S+)(?: -> (\S+))?", ln)
                   for ln in stdout.splitlines() if re.match(r"\[\d/4\] \S+  seed 7  epoch ", ln)]
    assert len(epoch_lines) == 8 and all(epoch_lines), stdout
    for m in epoch_lines:
        r = rows[int(m.group(1)) - 1]
        history = {h["epoch"]: h for h in run_files.read_history(root / "trials" / r["trial"] / "history.csv")}
        h = history[int(m.group(3))]
        assert (m.group(2), m.group(4), m.group(5)) == (r["setting"], f"{h['val_accuracy']:.4f}", f"{h['lr']:.3g}")
        assert (m.group(6) is not None) == (r["reduce_lr"] == "on" and m.group(3) == "2")


def _check_paired_files(root: Path, rows: list[dict]) -> None:
    """settings.csv and comparison.md's paired cells are stats.paired of comparison.csv's numbers."""
    by_setting: dict[str, dict[int, float]] = {}
    for r in rows:
        by_setting.setdefault(r["setting"], {})[int(r["seed"])] = float(r["test_accuracy"])
    baseline = rows[0]["setting"]
    settings_rows = list(csv.DictReader((root / "settings.csv").open()))
    assert [s["setting"] for s in settings_rows] == list(by_setting)
    md_cells = {cells[1]: cells for cells in _md_rows((root / "comparison.md").read_text())}
    for s in settings_rows:
        if s["setting"] == baseline:
            assert (s["n_seeds"], s["diff_mean"], s["p_value"]) == ("1", "", "")
            assert md_cells[baseline][8:] == ["", "", "", ""]
            continue
        c = stats.paired(by_setting[s["setting"]], by_setting[baseline])
        assert (int(s["n_seeds"]), float(s["diff_mean"]), s["diff_ci_low"], s["seeds_needed"]) == (1, c.diff_mean, "", "")
        assert md_cells[s["setting"]][8:] == tables.paired_cells(c) == [f"{c.diff_mean:+.4f}", "–", "1", "–"]


def _check_trial_events(root: Path, rows: list[dict]) -> None:
    """Every trial's TensorBoard events, written by the study's driver, hold its history; Tune wrote none."""
    from tests.support.runs import read_events

    for r in rows:
        folder = root / "trials" / r["trial"]
        got = read_events(folder / "tensorboard")
        history = run_files.read_history(folder / "history.csv")
        assert got["val_accuracy"] == [(h["epoch"], round(h["val_accuracy"], 6)) for h in history]
        assert got["test/accuracy"] == [(2, round(float(r["test_accuracy"]), 6))]
    assert not list((root / "tune").rglob("events.out.tfevents*"))


def test_an_address_nothing_answers_at_is_refused_before_anything_starts(tmp_path):
    import socket

    from service.cluster import AddressError

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    spec = study({"reduce_lr.factor": [0.1, 0.5]}, output=str(tmp_path))
    with pytest.raises(AddressError, match="nothing answers there"):
        compare.run(spec, address=f"127.0.0.1:{port}", echo=lambda line: None)
    assert not (tmp_path / spec.name).exists()


# --- paired statistics and sequential seeding ---------------------------------------------------


PAIRED_ROWS = [
    row("x.y=A", 7, 0.90), row("x.y=A", 8, 0.92), row("x.y=A", 9, 0.94),
    row("x.y=B", 7, 0.91), row("x.y=B", 8, 0.93), row("x.y=B", 9, 0.95),          # +0.01 on every seed
    row("x.y=C", 7, 0.95), row("x.y=C", 8, 0.90), row("x.y=C", 9, 0.0, status="failed"),  # +0.05, -0.02
]


def test_settings_csv_and_markdown_carry_the_paired_statistics():
    settings = grid_lib.expand_settings({"x.y": ["A", "B", "C"]})
    records = aggregate.aggregate(PAIRED_ROWS, [s.label for s in settings])
    out = {r["setting"]: r for r in csv.DictReader(io.StringIO(tables.settings_csv(records, settings, ["x.y"])))}
    assert list(out) == ["x.y=A", "x.y=B", "x.y=C"]  # grid order, the baseline first
    a, b, c = out["x.y=A"], out["x.y=B"], out["x.y=C"]
    assert (a["x.y"], b["x.y"], b["rank"], b["n_ok"], b["test_accuracy_mean"]) == ("A", "B", "1", "3", "0.93")  # B ranks first: 0.93 > 0.925 > 0.92
    # The baseline: its own seeds, no paired columns
    assert (a["n_seeds"], a["diff_mean"], a["diff_ci_low"], a["diff_ci_high"], a["p_value"], a["seeds_needed"]) == \
        ("3", "", "", "", "", "")
    # B - A = 0.01 on all 3 seeds: the interval is the value itself; both exact tests 2 / 2^3 = 0.25;
    # sd 0 -> a paired t-test needs its floor of 2 seeds
    assert float(b["diff_mean"]) == pytest.approx(0.01) and float(b["diff_sd"]) == 0.0
    assert float(b["diff_ci_low"]) == pytest.approx(0.01) and float(b["diff_ci_high"]) == pytest.approx(0.01)
    assert (b["n_seeds"], b["p_value"], b["p_sign"], b["seeds_needed"], b["resolved"], b["beats"]) == \
        ("3", "0.25", "0.25", "2", "True", "3")
    # C - A = +0.05, -0.02 on the 2 seeds both finished: mean 0.015; the 4 equally likely resamples
    # have means -0.02, 0.015, 0.015, 0.05, so the 2.5% / 97.5% quantiles are the extremes;
    # Wilcoxon: ranks 2 (+) and 1 (-), T+ = 2 of {0, 1, 2, 3}: p = 2 * 2/4 = 1; sign test 1 of 2: 1
    assert c["n_seeds"] == "2" and float(c["diff_mean"]) == pytest.approx(0.015)
    assert float(c["diff_ci_low"]) == pytest.approx(-0.02) and float(c["diff_ci_high"]) == pytest.approx(0.05)
    assert (c["p_value"], c["p_sign"], c["resolved"]) == ("1.0", "1.0", "False")
    assert float(c["diff_sd"]) == pytest.approx(statistics.stdev([0.05, -0.02]))
    # ((1.96 + 0.84) * sd / mean)^2 = 85.5 with normal quantiles; t quantiles at n - 1 df add a few
    paired_c = next(r.paired for r in records if r.setting == "x.y=C")
    assert int(c["seeds_needed"]) == stats.seeds_needed(paired_c.diff_mean, paired_c.diff_sd) == 88
    assert stats.seeds_needed(paired_c.diff_mean, paired_c.diff_sd, method="normal") == 86

    md = tables.markdown(study({}), records, PAIRED_ROWS, settings, how_it_ran="Sequential seeding: max 4 seeds reached.")
    cells = {r[1]: r for r in _md_rows(md)}
    assert cells["x.y=A"][7:] == ["baseline", "", "", "", ""]
    assert cells["x.y=B"][8:] == ["+0.0100", "[+0.0100, +0.0100]", "0.25", "2"]
    assert cells["x.y=C"][8:] == ["+0.0150", "[-0.0200, +0.0500]", "1", "88"]
    assert ("- `x.y=B` against `x.y=A`: +0.0100 test accuracy over 3 paired seeds, 95% CI +0.0100 to +0.0100: "
            "resolved, higher than the baseline (the interval excludes zero); Wilcoxon p = 0.25, sign test p = 0.25; "
            "a paired t-test would need 2 seed(s) for a difference this size.") in md
    assert "- `x.y=C` against `x.y=A`: +0.0150 test accuracy over 2 paired seeds, 95% CI -0.0200 to +0.0500: " \
           "not resolved with these seeds (the interval includes zero);" in md
    assert "\n\nSequential seeding: max 4 seeds reached.\n" in md


def _finished_trial(trial, acc: float) -> None:
    """A trial folder as a finished run leaves it (what a study reuses without Ray)."""

    history = [{"epoch": 1, "loss": 0.3, "accuracy": 0.9, "val_loss": 0.3, "val_accuracy": acc, "lr": 0.01,
                "seconds": 1.0, "workers": 1}]
    decision = {"epoch": 1, "rank": 0, "values": {"val_accuracy": acc}, "lr_before": 0.01, "lr_after": 0.01,
                "reduced": False, "stop": False, "plateau_wait": 0, "stopping_wait": None}
    summary = {"name": trial.name, "data": {"source": "sample"}, "epochs_run": 1, "stopped_early": False,
               "stop_epoch": None, "best_epoch": 1, "best_val_accuracy": acc, "test_accuracy": acc,
               "test_error": 1 - acc, "lr_reductions": [], "wall_seconds": 1.0}
    run_files.write_run(Path(trial.spec.output) / trial.name, trial.spec, history, [decision], summary)


@pytest.mark.parametrize("unresolved, expected", [
    (False, "every setting resolved after 6 seeds"),
    (True, "max 7 seeds reached; unresolved: reduce_lr.factor=0.5"),
])
def test_sequential_seeding_adds_rounds_until_resolved_or_max(tmp_path, unresolved, expected):
    """The study driver's rounds over trial folders that are already finished (no Ray needed)."""
    spec = study({"reduce_lr.factor": [0.1, 0.5]}, seeds=None, output=str(tmp_path)).model_copy(
        update={"seeds": CompareSpec.model_validate({"kind": "compare", "base": BASE,
                                                     "seeds": {"start": 3, "max": 7, "first": 7}}).seeds})
    for t in grid_lib.expand(spec, tmp_path / "study" / "trials"):
        # the baseline 0.90 + seed/1000; the setting 0.01 higher, or alternately higher and lower
        bump = (0.01 if t.seed % 2 else -0.01) if unresolved else 0.01
        _finished_trial(t, 0.90 + t.seed / 1000 + (bump if t.setting.index else 0.0))
    said = []
    assert compare.run(spec, echo=said.append) == 0
    rounds = [ln for ln in said if ln.startswith(("after ", "every setting", "max "))]
    assert rounds[:3] == ["after 3 seeds every setting resolved, but a stop needs at least 6 seeds; adding seed 10",
                          "after 4 seeds every setting resolved, but a stop needs at least 6 seeds; adding seed 11",
                          "after 5 seeds every setting resolved, but a stop needs at least 6 seeds; adding seed 12"] \
        if not unresolved else rounds[0] == "after 3 seeds unresolved: reduce_lr.factor=0.5; adding seed 10"
    assert rounds[-1] == expected
    root = tmp_path / "study"
    seeds = {int(r["seed"]) for r in csv.DictReader((root / "comparison.csv").open())}
    assert seeds == set(range(7, 13 if not unresolved else 14))
    assert (root / "comparison.md").read_text().rstrip().endswith(f"Sequential seeding: {expected}.")
    assert said[-1].endswith(f"; {expected}; baseline: reduce_lr.factor=0.1 -> {root / 'comparison.md'}")
    settings_rows = list(csv.DictReader((root / "settings.csv").open()))
    assert settings_rows[1]["n_seeds"] == str(len(seeds))
    assert json.loads((root / "status.json").read_text())["state"] == "finished"
    from service import runs

    shown = runs.show(root)
    assert shown.startswith("study: study, finished\n\n# study\n")
    assert shown.endswith((root / "comparison.md").read_text())
    (listed,) = runs.index(tmp_path)
    assert (listed["kind"], listed["stop_reason"]) == ("compare", expected)


def test_quiet_keeps_only_the_final_table_and_line(tmp_path, capsys, monkeypatch):
    import yaml

    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    spec = study({"reduce_lr.factor": [0.1, 0.5]}, seeds=[7, 8], output=str(tmp_path))
    for t in grid_lib.expand(spec, tmp_path / "study" / "trials"):
        _finished_trial(t, 0.90 + t.seed / 1000 + 0.01 * t.setting.index)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"kind": "compare", "name": "study", "base": BASE,
                                    "grid": {"reduce_lr.factor": [0.1, 0.5]}, "seeds": [7, 8]}))
    assert cli.main(["compare", str(path), "--output", str(tmp_path)]) == 0
    loud = capsys.readouterr().out.splitlines()
    assert loud[0].startswith("study: 2 setting(s) x 2 seed(s), 1 worker(s) per trial, 4 already finished")
    assert "every trial already finished; use --fresh to train them again" in loud
    assert cli.main(["compare", str(path), "--output", str(tmp_path), "--quiet"]) == 0
    quiet = capsys.readouterr().out.splitlines()
    assert quiet[0] == "" and quiet[1].startswith("rank  setting ") and len(quiet) == 5
    assert re.fullmatch(r"4/4 trials finished in \d+s; baseline: reduce_lr.factor=0.1 -> .*comparison.md", quiet[-1])
    assert quiet[2:4] == loud[-3:-1]  # the same ranked table
