"""What a user writes, checked before anything starts: every spec error at once, the spec lint
(findings on valid specs), which direction is better for a monitor (and the curves' star), and
`plateau check`. No Ray.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import yaml

from service.report import plots
from service.report.records import HistoryRow
from service.lint import SEED_ADVICE, inferred_mode, lint
from service.spec import EarlyStoppingSpec, ReduceLRSpec, dump_spec, higher_is_better, load_spec
from tests.support.deciders import spec_with
from tests.support.limits import COMMAND_S
from tests.support.project import PROJECT_ROOT, plateau


# ---------------------------------------------------------------------------------------------
# Every spec error at once


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
# Spec lint and plateau check


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


def test_a_setting_the_engine_does_not_read_is_one_line_for_that_engine_only():
    tuned = ["training.steps_per_execution=10", "scaling.collective=ring"]
    assert lint(load_spec(None, tuned)) == []  # tf_keras reads both
    assert lint(load_spec(None, [*tuned, "training.engine=keras_jax"])) == [
        "training.steps_per_execution 10 has no effect on training.engine keras_jax: an epoch is one jitted call (a step, "
        "for a model with a convolution); remove it, or train with another engine",
        "scaling.collective ring has no effect on training.engine keras_jax: JAX's processes use gloo between "
        "CPUs and NCCL between GPUs; remove it, or train with another engine"]
    assert lint(load_spec(None, ["training.engine=keras_jax", "training.steps_per_execution=50"])) == []  # the default


@pytest.mark.parametrize("monitor", ["val_loss", "val_accuracy", "accuracy_drop", "auc", "f1"])
@pytest.mark.parametrize("mode", ["auto", "min", "max"])
def test_higher_is_better_is_what_each_stock_callback_decides(monitor, mode):
    """One definition, checked against the callbacks themselves: tf_keras's ReduceLROnPlateau and
    EarlyStopping read `mode: auto` differently ("acc" anywhere in the name, against a name that
    ends in acc/accuracy/auc), and each spec section follows its own callback's rule."""
    import tf_keras as keras

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

    history = [HistoryRow.from_row({"epoch": e, "loss": 0.5, "val_loss": vl, "accuracy": 0.9, "val_accuracy": va})
               for e, vl, va in ((1, 0.4, 0.8), (2, 0.2, 0.9), (3, 0.6, 0.95))]
    monitored = spec_with(f"reduce_lr={{monitor: {monitor}, mode: {mode}}}").monitored
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2)
    plots._metric_panel(ax_loss, history, ("loss", "val_loss"), monitored, "loss")
    plots._metric_panel(ax_acc, history, ("accuracy", "val_accuracy"), monitored, "accuracy")
    stars = [(int(line.get_xdata()[0]), float(line.get_ydata()[0]))
             for ax in (ax_loss, ax_acc) for line in ax.lines if line.get_marker() == "*"]
    plt.close(fig)
    assert stars == [starred]


def test_check_prints_the_resolved_spec_and_warnings_without_ray_or_tensorflow(tmp_path):
    code = ("import sys; from service.cli import main; rc = main(sys.argv[1:]); "
            "print('IMPORTED', 'tensorflow' in sys.modules, 'ray' in sys.modules, file=sys.stderr); sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code, "check", "jobs/seed-reduce-lr-keras2.yaml", "--data", "sample",
                           "--set", f"output={tmp_path}", "--set", "early_stopping.patience=1"],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=COMMAND_S)
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
