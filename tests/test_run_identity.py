"""Run identity, no Ray: what a spec change means for a run folder, and when a folder holds a run worth
protecting.
"""

from __future__ import annotations


import pytest

from service import rundir
from service.report import files as run_files
from service.spec import dump_spec, load_spec
from tests.support.runs import make_spec
from tests.support.project import PROJECT_ROOT


# ---------------------------------------------------------------------------------------------
# Run identity


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
    run_files.write_history(out / "history.csv", [])
    with pytest.raises(rundir.RunFolderError) as caught:
        rundir.check_same_spec(spec)
    assert str(caught.value) == (f"{out} holds a run of another spec (training.epochs 9 -> 3); use --fresh to "
                                 "discard it, or --name to train this spec under another name")
