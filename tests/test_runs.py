"""`plateau show`'s words (service/explain.py), the run index (service/runs.py), TensorBoard
events read back (service/events.py) and the CLI's habits. Fast: files made here, no Ray; the
words are also checked against our real decision stack on a tiny tf_keras model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from service import cli, events, runs
from service.report import files as run_files
from service.explain import explain, pair, short
from service.spec import validate_train
from tests.support.limits import COMMAND_S
from tests.support.runs import make_spec, read_events
from tests.support.deciders import metric_sequence, PARAMETER_SETS, run_stack, spec_with

pytestmark = pytest.mark.filterwarnings("ignore::service.spec.SpecWarning")


def trace(values: list[dict], lrs: list[float], stop_at=None, waits=None) -> list[dict]:
    """Rank 0's records as a plateau before the deciders' best was recorded wrote them: epoch e
    trained at lrs[e-1] and left lrs[e] for the next."""
    out = []
    for i, v in enumerate(values):
        out.append({"epoch": i + 1, "rank": 0, "values": v, "lr_before": lrs[i], "lr_after": lrs[i + 1],
                    "reduced": lrs[i + 1] < lrs[i], "stop": stop_at == i + 1, "plateau_wait": None,
                    "stopping_wait": None})
    return out


def recorded(spec, values: list[dict]) -> list[dict]:
    """The records our decision stack (stock tf_keras deciders, one rank) writes for scripted
    global metrics, as decisions.jsonl holds them (inf as null)."""
    filled = [{"loss": 1.0, "accuracy": 0.5, "val_loss": 1.0, "val_accuracy": 0.5, **v} for v in values]
    return [run_files.finite_or_null(d.to_json()) for d in run_stack(spec, filled)[0]]


def test_numbers_read_as_written():
    assert [short(x) for x in (0.01, 0.001, 1e-4, 2.5e-6, 0.0)] == ["0.01", "0.001", "1e-4", "2.5e-6", "0"]
    assert pair(0.9375, 0.9375) == ("0.9375", "0.9375")
    assert pair(0.20731, 0.20734) == ("0.20731", "0.20734")  # more digits until they differ


def test_reduce_lr_words_with_cooldown_and_min_lr():
    spec = spec_with("reduce_lr={monitor: val_loss, factor: 0.5, patience: 1, min_delta: 0.01, cooldown: 2,"
                     " min_lr: 0.002}")
    losses = [1.0, 0.95, 0.96, 0.97, 0.98, 0.99, 1.0, 1.1, 1.2, 1.3]
    decisions = recorded(spec, [{"val_loss": v} for v in losses])
    assert [d["lr_after"] for d in decisions] == [0.01, 0.01, 0.005, 0.005, 0.0025, 0.0025, 0.002, 0.002, 0.002, 0.002]
    assert explain(spec, decisions) == [
        "epoch 1: val_loss 1.0000 is the first value: new best, wait 0",
        "epoch 2: val_loss 0.9500 beat the best 1.0000 by more than min_delta 0.01: new best, wait 0",
        "epoch 3: val_loss 0.9600 did not beat the best 0.9500 by min_delta 0.01; wait reached patience 1: "
        "lr 0.01 -> 0.005, cooldown 2",
        "epoch 4: val_loss 0.9700 did not beat the best 0.9500 by min_delta 0.01; in cooldown (1 more epoch(s)): wait 0",
        # Keras counts the cooldown down before it looks: the second epoch after a cut can cut again
        "epoch 5: val_loss 0.9800 did not beat the best 0.9500 by min_delta 0.01; wait reached patience 1: "
        "lr 0.005 -> 0.0025, cooldown 2",
        "epoch 6: val_loss 0.9900 did not beat the best 0.9500 by min_delta 0.01; in cooldown (1 more epoch(s)): wait 0",
        "epoch 7: val_loss 1.0000 did not beat the best 0.9500 by min_delta 0.01; wait reached patience 1: "
        "lr 0.0025 -> 0.002 (min_lr), cooldown 2",
        "epoch 8: val_loss 1.1000 did not beat the best 0.9500 by min_delta 0.01; in cooldown (1 more epoch(s)): wait 0",
        "epoch 9: val_loss 1.2000 did not beat the best 0.9500 by min_delta 0.01; wait 1 >= patience 1, "
        "but lr 0.002 is at min_lr",
        "epoch 10: val_loss 1.3000 did not beat the best 0.9500 by min_delta 0.01; wait 2 >= patience 1, "
        "but lr 0.002 is at min_lr",
    ]


def test_early_stopping_words_with_baseline_and_start_from_epoch():
    spec = spec_with("early_stopping={monitor: val_accuracy, patience: 2, min_delta: 0.01, baseline: 0.5,"
                     " start_from_epoch: 1}")
    accs = [0.3, 0.4, 0.45, 0.6, 0.605, 0.608]
    decisions = recorded(spec, [{"val_accuracy": a} for a in accs])
    assert [d["stop"] for d in decisions] == [False] * 5 + [True]
    assert explain(spec, decisions) == [
        "epoch 1: early stopping: not watching before epoch 2 (start_from_epoch)",
        "epoch 2: early stopping: val_accuracy 0.4000 is the first value: new best, but not past the baseline 0.5: wait 1",
        "epoch 3: early stopping: val_accuracy 0.4500 beat its best 0.4000 by more than min_delta 0.01: new best, "
        "but not past the baseline 0.5: wait 2",
        "epoch 4: early stopping: val_accuracy 0.6000 beat its best 0.4500 by more than min_delta 0.01: new best, wait 0",
        "epoch 5: early stopping: val_accuracy 0.6050 did not beat its best 0.6000 by min_delta 0.01; wait 1 < patience 2",
        "epoch 6: early stopping: val_accuracy 0.6080 did not beat its best 0.6000 by min_delta 0.01; "
        "wait 2 >= patience 2: stop",
    ]


def test_the_trace_wins_where_a_rank_local_decision_was_spread_by_consensus():
    spec = spec_with("reduce_lr={monitor: val_accuracy, patience: 5}", "early_stopping={monitor: val_accuracy, patience: 5}")
    records = recorded(spec, [{"val_accuracy": 0.9}, {"val_accuracy": 0.91}])
    # Another rank cut the rate and stopped; consensus made this rank follow.
    records[1].update(lr_after=0.001, reduced=True, stop=True, stop_reason="consensus")
    line = explain(spec, records)[1]
    assert line == ("epoch 2: val_accuracy 0.9100 beat the best 0.9000 by more than min_delta 1e-4: new best, wait 0; "
                    "early stopping: beat its best 0.9000: new best, wait 0; the trace says lr 0.01 -> 0.001 "
                    "(consensus); the trace says stop (another rank's EarlyStopping, by consensus)")


def test_a_trace_without_the_deciders_state_reads_as_not_recorded(tmp_path):
    """decisions.jsonl of a plateau from before the records kept `plateau_best` and friends."""
    spec = make_spec(tmp_path, "reduce_lr={monitor: val_accuracy, patience: 1}",
                     "early_stopping={monitor: val_loss, patience: 1}")
    old = trace([{"val_accuracy": 0.9, "val_loss": 0.3}, {"val_accuracy": 0.9, "val_loss": 0.4}], [0.01, 0.01, 0.001],
                stop_at=2)
    old[1].update(plateau_wait=0, stopping_wait=1, stop_reason="patience")
    assert explain(spec, old) == [
        "epoch 1: val_accuracy 0.9000; lr unchanged (best and cooldown not recorded: a trace of an older plateau); "
        "early stopping: val_loss 0.3000 (best not recorded: a trace of an older plateau)",
        "epoch 2: val_accuracy 0.9000; wait 0, lr 0.01 -> 0.001 (best and cooldown not recorded: a trace of an "
        "older plateau); early stopping: val_loss 0.4000; wait 1: stop (best not recorded: a trace of an older plateau)",
    ]


@pytest.mark.parametrize("overrides", PARAMETER_SETS, ids=lambda o: " ".join(o)[:60])
@pytest.mark.parametrize("seed", [1, 2])
def test_the_words_agree_with_the_real_decision_stack(overrides, seed):
    """Replayed over what our stack (stock tf_keras deciders) recorded, the words find the same
    cuts, stops and waits at every epoch: no 'the trace says' anywhere."""
    spec = spec_with(*overrides)
    decisions = [d.to_json() for d in run_stack(spec, metric_sequence(seed))[0]]
    lines = explain(spec, decisions)
    assert len(lines) == len(decisions)
    assert not [ln for ln in lines if "the trace says" in ln], lines
    assert [" -> " in ln for ln in lines] == [d["reduced"] for d in decisions]
    assert [ln.endswith(": stop") for ln in lines] == [d["stop"] for d in decisions]


# --- TensorBoard --------------------------------------------------------------------------------


HISTORY = [{"epoch": 1, "loss": 0.5, "accuracy": 0.8, "val_loss": 0.3, "val_accuracy": 0.9, "lr": 0.01, "seconds": 1},
           {"epoch": 2, "loss": 0.4, "accuracy": 0.85, "val_loss": 0.35, "val_accuracy": 0.9, "lr": 0.01, "seconds": 1},
           {"epoch": 3, "loss": 0.3, "accuracy": 0.9, "val_loss": 0.25, "val_accuracy": 0.95, "lr": 0.001, "seconds": 1}]


def test_event_files_read_back_with_every_scalar(tmp_path):
    decisions = trace([{"val_accuracy": r["val_accuracy"]} for r in HISTORY], [0.01, 0.01, 0.001, 0.001], stop_at=3)
    for d, wait in zip(decisions, (0, 1, 0)):
        d["plateau_wait"] = wait
    events.write_history(tmp_path / "tb", HISTORY, decisions, {"test_loss": 0.26, "test_accuracy": 0.94})
    got = read_events(tmp_path / "tb")
    assert got["val_accuracy"] == [(1, 0.9), (2, 0.9), (3, 0.95)]
    assert got["loss"] == [(1, 0.5), (2, 0.4), (3, 0.3)]
    assert got["lr"] == [(1, 0.01), (2, 0.01), (3, 0.001)]
    assert got["decisions/lr_reduced"] == [(1, 0.0), (2, 1.0), (3, 0.0)]
    assert got["decisions/lr_after"] == [(1, 0.01), (2, 0.001), (3, 0.001)]
    assert got["decisions/stop"] == [(1, 0.0), (2, 0.0), (3, 1.0)]
    assert got["decisions/plateau_wait"] == [(1, 0.0), (2, 1.0), (3, 0.0)]
    assert "decisions/stopping_wait" not in got  # no EarlyStopping in this trace
    assert got["test/accuracy"] == [(3, 0.94)] and got["test/loss"] == [(3, 0.26)]
    # Written again (a trial's events): replaced, not doubled
    events.write_history(tmp_path / "tb", HISTORY[:1], decisions[:1], None)
    assert read_events(tmp_path / "tb")["val_accuracy"] == [(1, 0.9)]


def test_a_resumed_run_hides_what_the_interrupted_attempt_wrote_after_its_checkpoint(tmp_path):
    import tensorflow as tf

    first = events.RunEvents(tmp_path / "tb")
    for row in HISTORY:  # the interrupted attempt got to epoch 3; its checkpoint is of epoch 2
        first.epoch(row, None)
    first.close()
    again = events.RunEvents(tmp_path / "tb")
    again.epoch({**HISTORY[2], "val_accuracy": 0.96}, None)
    again.close()
    files = sorted((tmp_path / "tb").glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime_ns)
    assert len(files) == 2
    starts = [e.step for e in tf.compat.v1.train.summary_iterator(str(files[1]))
              if e.HasField("session_log") and e.session_log.status == e.session_log.START]
    assert starts == [3]  # TensorBoard drops the earlier files' events from step 3 on


# --- the run index ------------------------------------------------------------------------------


def fake_run(output: Path, name: str, *, summary=None, history=HISTORY, status=None, decisions=None) -> Path:
    folder = output / name
    spec = validate_train({"name": name, "output": str(output), "data": {"source": "sample"},
                           "reduce_lr": {"monitor": "val_accuracy", "patience": 1}})
    run_files.write_run(folder, spec, history, decisions or [], summary)
    if status is not None:
        run_files.write_json(folder / runs.STATUS, status)
    return folder


SUMMARY = {"name": "done", "data": {"source": "sample"}, "epochs_run": 3, "stopped_early": True, "stop_epoch": 3,
           "test_accuracy": 0.94, "lr_reductions": [{"epoch": 2, "lr": 0.001}]}


def test_the_index_lists_runs_and_studies_newest_first(tmp_path):
    out = tmp_path / "results"
    fake_run(out, "done", summary=SUMMARY, status={"kind": "train", "state": "running", "started": "2026-01-03T10:00:00+00:00"})
    fake_run(out, "broke", status={"kind": "train", "state": "failed", "error": "training failed on rank 1",
                                   "started": "2026-01-02T10:00:00+00:00"})
    fake_run(out, "cut", history=HISTORY[:2], status={"kind": "train", "state": "running", "pid": 2 ** 22 + 7,
                                                       "host": "elsewhere", "started": "2026-01-01T10:00:00+00:00"})
    fake_run(out / "st" / "trials", "st-base-s7", summary={**SUMMARY, "name": "st-base-s7"})
    (out / "st" / "comparison.csv").write_text("trial,setting,seed,status,test_accuracy\n"
                                               "st-base-s7,base,7,ok,0.94\nst-base-s8,base,8,failed,\n")
    run_files.write_json(out / "st" / runs.STATUS, {"kind": "compare", "state": "finished", "started": "2026-01-04T09:00:00+00:00",
                                                 "note": "every setting resolved after 6 seeds"})
    (out / "not-a-run").mkdir()
    rows = runs.index(out)
    assert [(r["name"], r["kind"], r["status"], r["epochs"], r["stop_reason"], r["test_accuracy"], r["data"])
            for r in rows] == [
        ("st", "compare", "finished", None, "every setting resolved after 6 seeds", 0.94, "sample"),
        ("done", "train", "finished", 3, "early stopping at epoch 3", 0.94, "sample"),
        ("broke", "train", "failed", 3, "training failed on rank 1", None, "sample"),
        ("cut", "train", "interrupted", 2, "", None, "sample"),
    ]
    assert rows[0]["trials"] == 2 and rows[0]["trials_ok"] == 1
    text = runs.table(rows).splitlines()
    assert text[0].split() == ["NAME", "KIND", "STATUS", "EPOCHS", "STOP", "REASON", "TEST", "ACCURACY", "DATA", "STARTED"]
    assert text[2].split() == ["done", "train", "finished", "3", "early", "stopping", "at", "epoch", "3", "0.9400",
                               "sample", "2026-01-03", "10:00:00"]
    assert runs.why_it_ended({"stop_reason": "non-finite val_loss"}) == "non-finite val_loss"
    assert runs.why_it_ended({"stopped_early": False}) == "max_epochs"


def test_a_run_whose_folder_a_live_command_holds_is_running_with_its_holder(tmp_path):
    import socket

    from service import runlock

    status = {"kind": "train", "state": "running", "pid": os.getpid(), "host": socket.gethostname(),
              "started": "2026-01-01T00:00:00+00:00"}
    fake_run(tmp_path, "live", history=HISTORY[:2], status=status)
    # status.json alone says nothing about now: the process that wrote it may be long gone
    assert runs.index(tmp_path)[0]["status"] == "interrupted"
    with runlock.hold(tmp_path / "live", "plateau train live.yaml", echo=print):
        (row,) = runs.index(tmp_path)
        assert (row["status"], row["epochs"], row["stop_reason"]) == \
            ("running", 2, f"held by pid {os.getpid()} on {socket.gethostname()}")
        assert (row["holder"]["pid"], row["holder"]["host"], row["holder"]["command"]) == \
            (os.getpid(), socket.gethostname(), "plateau train live.yaml")
        assert runs.show(tmp_path / "live").splitlines()[0] == \
            f"live: train run, running (held by pid {os.getpid()} on {socket.gethostname()})"
    (row,) = runs.index(tmp_path)
    assert (row["status"], row["holder"]) == ("interrupted", None)


def test_cli_runs_show_version_and_flags(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)
    out = tmp_path / "results"
    decisions = recorded(spec_with("reduce_lr={monitor: val_accuracy, patience: 1}"),
                         [{"val_accuracy": a} for a in (0.9, 0.9, 0.95)])
    fake_run(out, "done", summary=SUMMARY, decisions=decisions,
             status={"kind": "train", "state": "running", "started": "2026-01-03T10:00:00+00:00"})
    assert cli.main(["runs", str(out), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert (row["name"], row["status"], row["test_accuracy"], row["started"]) == \
        ("done", "finished", 0.94, "2026-01-03T10:00:00+00:00")
    assert cli.main(["show", "done", "--output", str(out)]) == 0
    shown = capsys.readouterr().out.splitlines()
    assert shown[0] == "done: train run, finished (early stopping at epoch 3)"
    assert "test_accuracy: 0.94" in shown
    assert shown[-3:] == [
        "epoch 1: val_accuracy 0.9000 is the first value: new best, wait 0",
        "epoch 2: val_accuracy 0.9000 did not beat the best 0.9000 by min_delta 1e-4; wait reached patience 1: "
        "lr 0.01 -> 0.001",
        "epoch 3: val_accuracy 0.9500 beat the best 0.9000 by more than min_delta 1e-4: new best, wait 0",
    ]
    assert cli.main(["show", "nope", "--output", str(out)]) == 2
    assert capsys.readouterr().err.startswith("plateau: no run or study named 'nope' under ")

    parser = cli.build_parser()
    assert parser.parse_args(["train", "--verbose"]).verbose and parser.parse_args(["--verbose", "train"]).verbose
    assert not parser.parse_args(["train"]).verbose and parser.parse_args(["compare", "x", "--quiet"]).quiet
    assert parser.parse_args(["logs", "j", "-f"]).follow and parser.parse_args(["submit", "s", "-f"]).follow
    assert parser.parse_args(["status", "j", "--json"]).json and parser.parse_args(["jobs", "--json"]).json
    assert parser.parse_args(["compare", "x", "--quiet-trials"]).quiet_trials
    assert cli.main(["train", "--quiet", "--verbose"]) == 2
    assert capsys.readouterr().err == "plateau: --quiet and --verbose contradict each other; give one of them\n"


def test_version():
    from service import __version__

    done = subprocess.run([sys.executable, "-m", "service.cli", "--version"], capture_output=True, text=True,
                          timeout=COMMAND_S)
    assert done.returncode == 0 and done.stdout == f"plateau {__version__}\n"
