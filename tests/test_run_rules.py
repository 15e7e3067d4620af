"""The rules a run keeps, the parts that need no Ray: every spec error at once, the spec lint and
`plateau check`, which direction is better for a monitor (and the curves' star), run identity,
stop reasons, output files (umask, strict JSON), where lines go, unusable output locations and
addresses from RAY_ADDRESS, `submit --fresh`.

The Ray runs behind the same points (`plateau train` as a user types it) are in test_train_cli.py.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tf_keras as keras
import yaml

from service import console, jobs, report, rundir, sync
from service.lint import SEED_ADVICE, inferred_mode, lint
from service.spec import EarlyStoppingSpec, ReduceLRSpec, dump_spec, higher_is_better, load_spec
from tests.helpers import make_spec, stock_replay, tiny_model
from tests.test_sync import PairedCollective, ScriptedShard, run_stack, spec_with

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def plateau(*args: str, cwd: Path = PROJECT_ROOT, env: dict | None = None, umask: int | None = None):
    return subprocess.run([sys.executable, "-m", "service.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env=env, preexec_fn=(lambda: os.umask(umask)) if umask is not None else None)


# ---------------------------------------------------------------------------------------------
# 7. Every spec error at once


def test_every_spec_error_is_its_own_line_with_did_you_mean(tmp_path):
    (tmp_path / "typos.yaml").write_text("model:\n  dropout: 2\ntraining:\n  epoks: 3\n"
                                         "reduce_lr:\n  patiance: 2\n  factor: 1.5\n")
    done = plateau("train", "typos.yaml", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        "plateau: typos.yaml: model.dropout: Input should be less than 1 (got 2)",
        "plateau: typos.yaml: training.epoks: unknown field; did you mean 'epochs'?",
        "plateau: typos.yaml: reduce_lr.factor: Input should be less than 1 (got 1.5)",
        "plateau: typos.yaml: reduce_lr.patiance: unknown field; did you mean 'patience'?",
    ]
    assert not (tmp_path / "results").exists()


# ---------------------------------------------------------------------------------------------
# 8. Spec lint and plateau check


def test_lint_findings_name_the_fields_and_quote_the_seed():
    spec = load_spec(None, ["reduce_lr={monitor: val_accuracy, patience: 2, cooldown: 1, min_lr: 0.05}",
                            "early_stopping={monitor: val_accuracy, patience: 3, start_from_epoch: 30}",
                            "model.learning_rate=0.01", "training.epochs=30"])
    assert lint(spec) == [
        "early_stopping.patience 3 is not larger than reduce_lr.patience 2 + reduce_lr.cooldown 1 on val_accuracy: "
        f"EarlyStopping stops before a lowered rate can help (the seed: \"{SEED_ADVICE}\")",
        "reduce_lr.min_lr 0.05 is not below model.learning_rate 0.01: ReduceLROnPlateau can never lower the rate",
        "early_stopping.start_from_epoch 30 is not below training.epochs 30: EarlyStopping never looks at an epoch",
    ]
    assert SEED_ADVICE == "EarlyStopping's patience must be larger than ReduceLROnPlateau's, or the callback has no effect"
    # The seed's own settings (patience 2 over 1) and each limit's other side are clean.
    assert lint(load_spec(PROJECT_ROOT / "jobs/seed-reduce-lr.yaml")) == []
    assert lint(load_spec(None, ["reduce_lr={monitor: val_loss, patience: 2}",
                                 "early_stopping={monitor: val_accuracy, patience: 1}"])) == []  # other monitors
    assert lint(load_spec(None, ["reduce_lr={min_lr: 0.009}", "early_stopping={patience: 11, start_from_epoch: 29}"])) == []


def test_lint_on_modes_and_on_every_setting_of_a_study():
    spec = load_spec(None, ["reduce_lr={monitor: val_accuracy, mode: min}",
                            "early_stopping={monitor: val_loss, mode: min, patience: 20}"])
    assert lint(spec) == ["reduce_lr.mode min on val_accuracy: a higher val_accuracy is better, so the callback "
                          "would count every improvement as a step back; use mode max or auto"]
    # Every metric the model produces says its direction; a name that does not is flagged.
    assert [inferred_mode(m) for m in ("loss", "accuracy", "val_loss", "val_accuracy", "f1")] == [
        "min", "max", "min", "max", None]
    study = load_spec(PROJECT_ROOT / "jobs/compare-callbacks.yaml")
    found = lint(study)
    assert len(found) == 6 and all("early_stopping.patience 2 is not larger than" in f for f in found)
    assert found[0].startswith("reduce_lr.factor=0.1,reduce_lr.patience=2,early_stopping.patience=2: ")


@pytest.mark.parametrize("monitor", ["val_loss", "val_accuracy", "accuracy_drop", "auc", "f1"])
@pytest.mark.parametrize("mode", ["auto", "min", "max"])
def test_higher_is_better_is_what_each_stock_callback_decides(monitor, mode):
    """One definition, checked against the callbacks themselves: tf_keras's ReduceLROnPlateau and
    EarlyStopping read `mode: auto` differently ("acc" anywhere in the name, against a name that
    ends in acc/accuracy/auc), and each spec section follows its own callback's rule."""
    reduce = keras.callbacks.ReduceLROnPlateau(monitor=monitor, mode=mode)
    stopper = keras.callbacks.EarlyStopping(monitor=monitor, mode=mode)
    assert higher_is_better(monitor, mode, "ReduceLROnPlateau") == bool(reduce.monitor_op(2.0, 1.0))
    assert higher_is_better(monitor, mode, "EarlyStopping") == (stopper.monitor_op is np.greater)
    if monitor in ("val_loss", "val_accuracy"):  # what a spec can monitor
        assert ReduceLRSpec(monitor=monitor, mode=mode).higher_is_better == bool(reduce.monitor_op(2.0, 1.0))
        assert EarlyStoppingSpec(monitor=monitor, mode=mode).higher_is_better == (stopper.monitor_op is np.greater)


@pytest.mark.parametrize("monitor, mode, starred", [
    ("val_loss", "auto", (2, 0.2)), ("val_loss", "max", (3, 0.6)),
    ("val_accuracy", "auto", (3, 0.95)), ("val_accuracy", "min", (1, 0.8)),
])
def test_the_curves_star_the_best_epoch_in_the_direction_the_callbacks_use(monitor, mode, starred):
    """curves.png's star follows an explicit `mode`, as the callbacks did, not the metric's name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = [{"epoch": e, "loss": 0.5, "val_loss": vl, "accuracy": 0.9, "val_accuracy": va}
               for e, vl, va in ((1, 0.4, 0.8), (2, 0.2, 0.9), (3, 0.6, 0.95))]
    monitored = spec_with(f"reduce_lr={{monitor: {monitor}, mode: {mode}}}").monitored
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2)
    report._metric_panel(ax_loss, history, ("loss", "val_loss"), monitored, "loss")
    report._metric_panel(ax_acc, history, ("accuracy", "val_accuracy"), monitored, "accuracy")
    stars = [(int(line.get_xdata()[0]), float(line.get_ydata()[0]))
             for ax in (ax_loss, ax_acc) for line in ax.lines if line.get_marker() == "*"]
    plt.close(fig)
    assert stars == [starred]


def test_check_prints_the_resolved_spec_and_warnings_without_ray_or_tensorflow(tmp_path):
    code = ("import sys; from service.cli import main; rc = main(sys.argv[1:]); "
            "print('IMPORTED', 'tensorflow' in sys.modules, 'ray' in sys.modules, file=sys.stderr); sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code, "check", "jobs/seed-reduce-lr-keras2.yaml", "--data", "sample",
                           "--set", f"output={tmp_path}", "--set", "early_stopping.patience=1"],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        "warning: model.lr is deprecated; use model.learning_rate",
        "warning: reduce_lr.epsilon is deprecated; it is read as reduce_lr.min_delta",
        "warning: early_stopping.patience 1 is not larger than reduce_lr.patience 1 + reduce_lr.cooldown 0 on "
        f"val_accuracy: EarlyStopping stops before a lowered rate can help (the seed: \"{SEED_ADVICE}\")",
        "IMPORTED False False",
    ]
    expected = load_spec(PROJECT_ROOT / "jobs/seed-reduce-lr.yaml",
                         ["data.source=sample", f"output={tmp_path}", "early_stopping.patience=1"])
    assert yaml.safe_load(done.stdout) == yaml.safe_load(dump_spec(expected))  # legacy names translated
    assert done.stdout.splitlines()[-1] == f"# {tmp_path}/seed-reduce-lr: a new run"
    assert not (tmp_path / "seed-reduce-lr").exists()


def test_check_of_a_bad_spec_is_exit_2_and_the_quickstart_spec_is_silent(tmp_path):
    (tmp_path / "bad.yaml").write_text("reduce_lr:\n  factor: 2\n")
    bad = plateau("check", str(tmp_path / "bad.yaml"))
    assert (bad.returncode, bad.stdout) == (2, "")
    assert bad.stderr.splitlines() == [f"plateau: {tmp_path}/bad.yaml: reduce_lr.factor: Input should be less than 1 (got 2)"]
    quickstart = plateau("check", "jobs/seed-reduce-lr.yaml", "--data", "sample", "--epochs", "5",
                         "--set", f"output={tmp_path}")
    assert (quickstart.returncode, quickstart.stderr) == (0, "")
    study = plateau("check", "jobs/seed-comparison.yaml")
    assert (study.returncode, study.stderr) == (0, "")
    assert yaml.safe_load(study.stdout)["kind"] == "compare"


# ---------------------------------------------------------------------------------------------
# 1. Run identity


def test_spec_changes_list_every_changed_field():
    old = load_spec(PROJECT_ROOT / "jobs/seed-reduce-lr.yaml", ["data.source=sample", "training.epochs=5"])
    new = load_spec(PROJECT_ROOT / "jobs/seed-reduce-lr.yaml", ["reduce_lr=null", "output=elsewhere",
                                                                  "scaling.max_failures=2"])
    assert rundir.spec_changes(old.model_dump(mode="json"), new.model_dump(mode="json")) == [
        "data.source sample -> auto",
        "training.epochs 5 -> 30",
        "reduce_lr {monitor: val_accuracy, mode: auto, min_delta: 0.0001, patience: 1, factor: 0.1, cooldown: 0, "
        "min_lr: 0.0} -> null",
    ]  # where the folder is and how often to retry are not what a run computes


def test_a_folder_without_a_trained_epoch_is_not_a_run_to_protect(tmp_path):
    spec = make_spec(tmp_path)
    out = rundir.RunPaths.of(spec).out_dir
    out.mkdir(parents=True)
    (out / "spec.yaml").write_text(dump_spec(make_spec(tmp_path, "training.epochs=9")))
    rundir.check_same_spec(spec)  # a run that died before its first epoch: nothing to lose
    report.write_history(out / "history.csv", [])
    with pytest.raises(rundir.RunFolderError) as caught:
        rundir.check_same_spec(spec)
    assert str(caught.value) == (f"{out} holds a run of another spec (training.epochs 9 -> 3); use --fresh to "
                                 "discard it, or --name to train this spec under another name")


# ---------------------------------------------------------------------------------------------
# 2. Stop reasons, decided where the knowledge is


def _reasons(trace):
    return [d.stop_reason for d in trace]


def test_early_stopping_tells_patience_from_baseline():
    flat = [dict(loss=1, accuracy=0.5, val_loss=1, val_accuracy=a) for a in (0.90, 0.92, 0.92, 0.92)]
    spec = spec_with("early_stopping={monitor: val_accuracy, patience: 2}")
    trace, deciders, _ = run_stack(spec, flat)
    assert [d.epoch for d in trace if d.stop] == [4] and _reasons(trace)[-1] == "patience"
    assert deciders.state_dicts()["early_stopping"]["stop_reason"] == "patience"  # kept in the checkpoint
    # Still improving, but below the baseline: stock tf_keras stops on the baseline at epoch 3,
    # where the same callback without a baseline would go on.
    rising = [dict(loss=1, accuracy=0.5, val_loss=1, val_accuracy=a) for a in (0.90, 0.92, 0.91, 0.93)]
    spec = spec_with("early_stopping={monitor: val_accuracy, patience: 2, baseline: 0.97}")
    trace, _, _ = run_stack(spec, rising)
    assert [d.epoch for d in trace if d.stop] == [3] and _reasons(trace)[-1] == "baseline"
    assert stock_replay(spec, rising)[1] == 3
    assert stock_replay(spec_with("early_stopping={monitor: val_accuracy, patience: 2}"), rising)[1] is None


def test_consensus_names_another_ranks_stop_and_the_last_epoch_names_max_epochs():
    spec = spec_with("early_stopping={monitor: val_loss, patience: 5}")
    model = tiny_model(0.01)
    deciders = sync.decision_callbacks(spec, PairedCollective(0, [[1.0, 0.01]]), 0, ScriptedShard([]))
    for cb in (deciders.consensus, deciders.early_stopping):
        cb.set_model(model)
    deciders.early_stopping.on_train_begin()
    deciders.consensus.on_epoch_begin(0)
    deciders.consensus.on_epoch_end(0, {"val_loss": 0.5})
    assert (deciders.consensus.last.stop, deciders.consensus.last.stop_reason) == (True, "consensus")

    sequence = [dict(loss=1, accuracy=0.5, val_loss=1 - e / 10, val_accuracy=0.9) for e in range(3)]
    model = tiny_model(0.01)
    deciders = sync.decision_callbacks(spec_with("reduce_lr={}"), sync.Collective(), 0,
                                       ScriptedShard([(v["val_loss"] * 10, 9, 10) for v in sequence]))
    callbacks = keras.callbacks.CallbackList(deciders.as_list(), model=model)
    callbacks.set_params({"epochs": 3})
    reasons = []
    for epoch, values in enumerate(sequence):
        callbacks.on_epoch_begin(epoch)
        callbacks.on_epoch_end(epoch, {"loss": 1.0, "accuracy": 0.5})
        reasons.append(deciders.consensus.last.stop_reason)
    assert reasons == [None, None, "max_epochs"]


def test_a_non_finite_global_metric_stops_at_that_epoch_with_no_early_stopping_configured():
    spec = spec_with("reduce_lr={monitor: val_loss}")
    sums = [(300.0, 900.0, 1000.0), (np.nan, 100.0, 1000.0), (200.0, 950.0, 1000.0)]
    deciders = sync.decision_callbacks(spec, sync.Collective(), 0, ScriptedShard(sums))
    model = tiny_model(0.01)
    callbacks = keras.callbacks.CallbackList(deciders.as_list(), model=model)
    callbacks.set_params({"epochs": 3})
    callbacks.on_train_begin()
    trace = []
    for epoch in range(3):
        callbacks.on_epoch_begin(epoch)
        callbacks.on_epoch_end(epoch, {"loss": 1.0, "accuracy": 0.5})
        trace.append(deciders.consensus.last)
        if model.stop_training:
            break
    assert [(d.epoch, d.stop, d.stop_reason) for d in trace] == [(1, False, None), (2, True, "non_finite")]
    assert math.isnan(trace[-1].values["val_loss"])
    assert report.stop_words(trace[-1].to_json()) == "stopped: val_loss is nan"


# ---------------------------------------------------------------------------------------------
# 6. Output files and lines


def test_output_files_follow_the_umask_and_json_is_strict(tmp_path):
    old = os.umask(0o027)
    try:
        report.write_json(tmp_path / "summary.json", {"a": float("nan"), "b": [1.5, float("inf")], "c": {"d": 2}})
        report.write_decisions(tmp_path / "decisions.jsonl", [{"values": {"val_loss": float("nan")}}])
    finally:
        os.umask(old)
    for name in ("summary.json", "decisions.jsonl"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o640
    strict = dict(parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert json.loads((tmp_path / "summary.json").read_text(), **strict) == {"a": None, "b": [1.5, None], "c": {"d": 2}}
    assert report.read_decisions(tmp_path / "decisions.jsonl") == [{"values": {"val_loss": None}}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["decisions.jsonl", "summary.json"]  # no temporaries


def test_failure_and_warning_lines_go_to_stderr_progress_to_stdout(capsys):
    for line in ("epoch 1/5  loss 0.5", "plateau: training failed", "warning: x", "WARNING: data", "done: 5 epochs"):
        console.say(line)
    captured = capsys.readouterr()
    assert captured.out.splitlines() == ["epoch 1/5  loss 0.5", "done: 5 epochs"]
    assert captured.err.splitlines() == ["plateau: training failed", "warning: x", "WARNING: data"]


def test_an_unusable_output_location_is_one_line_exit_2_before_ray(tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    done = plateau("train", "--data", "sample", "--output", str(tmp_path / "a-file" / "results"), cwd=tmp_path)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.splitlines() == [
        f"plateau: cannot write the run's folder {tmp_path}/a-file/results/plateau (Not a directory); choose a "
        "writable place with --output (or the spec's output)"]


def test_an_address_from_ray_address_is_named_as_such(tmp_path):
    env = dict(os.environ, RAY_ADDRESS="http://127.0.0.1:8265")
    done = plateau("train", "--data", "sample", cwd=tmp_path, env=env)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "plateau: RAY_ADDRESS=http://127.0.0.1:8265 (from the environment; unset it to train on an embedded Ray): "
        "give the cluster's GCS address HOST:6379 (or 'auto'); http://HOST:8265 is the job server, used by "
        "'plateau submit'"]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    flag = plateau("train", "--data", "sample", "--address", f"127.0.0.1:{port}", cwd=tmp_path, env=env)
    assert flag.returncode == 2 and flag.stderr.startswith(f"plateau: --address 127.0.0.1:{port}: nothing answers")
    assert not (tmp_path / "results").exists()


def test_submit_fresh_is_part_of_the_jobs_command():
    plain = jobs.build_submission("jobs/seed-reduce-lr.yaml", ["data.source=sample"])
    fresh = jobs.build_submission("jobs/seed-reduce-lr.yaml", ["data.source=sample"], fresh=True)
    assert plain["entrypoint"] == ("python -m service.cli run jobs/seed-reduce-lr.yaml --address auto "
                                   "--set data.source=sample")
    assert fresh["entrypoint"] == plain["entrypoint"] + " --fresh"
