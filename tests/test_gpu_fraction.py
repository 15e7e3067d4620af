"""A fractional `scaling.gpus_per_worker` with GPUs is refused before anything starts, by every
command that takes a spec, on both engines: two ranks on one GPU is what NCCL refuses ("Duplicate
GPU detected"), and keras_jax has no other collective between GPUs. Fast: the spec's validation
refuses it, so no Ray and no TensorFlow start."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from service import cli
from service.grid import expand
from service.spec import SpecError, load_spec

ROOT = Path(__file__).resolve().parent.parent
TRAIN_SPEC = str(ROOT / "jobs" / "seed-reduce-lr.yaml")
STUDY_SPEC = str(ROOT / "jobs" / "seed-comparison.yaml")
REFUSED = ("gpus_per_worker 0.5 would put two workers on one GPU, which NCCL refuses (and keras_jax has no other "
           "collective between GPUs); give each worker a whole GPU (gpus_per_worker: 1) and as many workers as "
           "there are GPUs (--workers N), or train on CPUs without --gpu")


@pytest.fixture(autouse=True)
def _keep_process_settings(monkeypatch):
    # main() sets these process-wide; keep them to each test.
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")


@pytest.mark.parametrize("engine", ["tf_keras", "keras_jax"])
@pytest.mark.parametrize("command, spec", [("check", TRAIN_SPEC), ("train", TRAIN_SPEC), ("run", TRAIN_SPEC),
                                           ("compare", STUDY_SPEC), ("check", STUDY_SPEC), ("submit", TRAIN_SPEC),
                                           ("submit", STUDY_SPEC)])
def test_a_fraction_of_a_gpu_is_one_line_and_exit_2(command, spec, engine, tmp_path, capsys):
    argv = [command, spec, "--gpu", "--set", "scaling.gpus_per_worker=0.5",
            "--set", f"training.engine={engine}", "--output", str(tmp_path)]
    if command == "submit":
        argv += ["--address", "http://127.0.0.1:9"]  # never reached: the spec is refused first
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"plateau: {spec}: ") and err[0].endswith(REFUSED), err[0]
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("value", ["0.5", "1.5", "0.25"])
def test_every_fraction_is_refused_and_whole_gpus_are_not(value):
    with pytest.raises(SpecError, match=f"gpus_per_worker {value} would put two workers on one GPU"):
        load_spec(TRAIN_SPEC, ["scaling.use_gpu=true", f"scaling.gpus_per_worker={value}"])
    for whole in ("1", "2", "1.0"):
        spec = load_spec(TRAIN_SPEC, ["scaling.use_gpu=true", f"scaling.gpus_per_worker={whole}"])
        assert spec.scaling.resources_per_worker["GPU"] == float(whole)
    # Without GPUs the field is not read, so a fraction there is harmless.
    assert load_spec(TRAIN_SPEC, [f"scaling.gpus_per_worker={value}"]).scaling.resources_per_worker == {"CPU": 1.0}


def test_a_study_grid_over_fractions_names_the_setting(tmp_path, capsys):
    with pytest.raises(SpecError) as info:
        expand(load_spec(STUDY_SPEC, ["base.scaling.use_gpu=true", "grid={scaling.gpus_per_worker: [1, 0.5]}"]))
    assert "gpus_per_worker=0.5" in str(info.value) and "would put two workers on one GPU" in str(info.value)
    assert cli.main(["check", STUDY_SPEC, "--gpu", "--set", "grid={scaling.gpus_per_worker: [1, 0.5]}",
                     "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "gpus_per_worker=0.5" in err[0] and err[0].endswith(REFUSED), err
    assert "gpus_per_worker=0.5" in str(info.value) and "would put two workers on one GPU" in str(info.value)
