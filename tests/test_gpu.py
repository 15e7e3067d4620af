"""`--gpu` on a machine without a usable GPU fails in one line, never silently on the CPU and
never by waiting forever (real Ray, real TensorFlow; this machine has no GPU)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import time

import pytest

from tests.support.limits import RUN_S
from tests.support.project import PROJECT_ROOT, program

pytestmark = pytest.mark.slow

SPEC = "jobs/seed-reduce-lr.yaml"


def _errors(proc: subprocess.CompletedProcess) -> list[str]:
    """stderr without the spec's legacy-name warning."""
    return [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("warning: ")]


def test_an_embedded_ray_without_gpus_refuses_a_gpu_run_at_once(tmp_path):
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "service.cli", "train", SPEC, "--data", "sample", "--gpu",
                           "--epochs", "1", "--output", str(tmp_path)],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=RUN_S)
    took = time.monotonic() - started
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert _errors(proc) == [
        "plateau: the run needs 2 GPUs (2 worker(s) x {CPU: 1, GPU: 1}), this machine's Ray has 0; lower "
        "scaling.num_workers or the resources per worker, or join a cluster with --address"]
    assert not list(tmp_path.glob("seed-reduce-lr/history.csv"))
    print(f"refused in {took:.0f}s")




def test_workers_whose_tensorflow_sees_no_gpu_fail_the_run_before_epoch_1(tmp_path):
    """On a Ray that declares two GPUs this machine lacks (programs/logical_gpus.py)."""
    started = time.monotonic()
    proc = program("logical_gpus", "train", SPEC, "--data", "sample", "--gpu", "--epochs", "2",
                   "--output", str(tmp_path), timeout=RUN_S)
    took = time.monotonic() - started
    assert proc.returncode == 1, proc.stdout + proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() + proc.stderr.splitlines() if ln.startswith("plateau: "))
    assert re.fullmatch(
        r"plateau: rank [01] on \d+\.\d+\.\d+\.\d+: use_gpu is set but TensorFlow sees no GPU \((this TensorFlow "
        r"is a CPU-only build|this TensorFlow has CUDA support but cannot use a GPU here: the CUDA libraries are "
        r"missing, or the node has no NVIDIA GPU and driver)\); install TensorFlow's CUDA build on the GPU nodes "
        r"with pip install -e '\.\[gpu\]', or train on CPUs without --gpu", line), line
    assert not re.search(r"^epoch \d", proc.stdout, re.M), "trained although no GPU was usable"
    print(f"failed in {took:.0f}s")


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="the jax extra is not installed")
def test_keras_jax_workers_whose_jax_sees_no_gpu_fail_the_run_before_epoch_1(tmp_path):
    proc = program("logical_gpus", "train", SPEC, "--data", "sample", "--gpu", "--set", "training.engine=keras_jax",
                   "--epochs", "2", "--output", str(tmp_path), timeout=RUN_S)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() + proc.stderr.splitlines() if ln.startswith("plateau: "))
    assert re.fullmatch(
        r"plateau: rank [01] on \d+\.\d+\.\d+\.\d+: use_gpu is set but JAX sees no GPU \(this JAX is a CPU-only "
        r"build\); install JAX's CUDA build on the GPU nodes with pip install -e '\.\[jax-gpu\]', or train on CPUs "
        r"without --gpu", line), line
    assert not re.search(r"^epoch \d", proc.stdout, re.M), "trained although no GPU was usable"
