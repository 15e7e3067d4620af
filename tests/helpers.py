"""Helpers shared by the tests: small models and specs, stock-Keras replays, and readers of a
finished run (its checkpoints, its decisions, exact metrics of its weights)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import tf_keras as keras

from service import checkpoint, sync
from service.model import build_model
from service.rundir import RunPaths
from service.spec import apply_overrides, validate_train


# Each engine, for tests that hold both to a guarantee; keras_jax's cases skip where its extra is not
# installed (jax and keras 3.15 need Python 3.11+).
NEEDS_JAX = pytest.mark.skipif(importlib.util.find_spec("jax") is None,
                               reason='the jax extra is not installed: pip install -e ".[jax]" (Python 3.11+)')
ENGINES = ["tf_keras", pytest.param("keras_jax", marks=NEEDS_JAX)]


# Both callbacks active with state worth losing: waits and a reduced learning rate.
DECIDING = (
    "training.epochs=5",
    "reduce_lr={monitor: val_loss, factor: 0.5, patience: 1, min_delta: 0.01}",
    "early_stopping={monitor: val_accuracy, patience: 3, min_delta: 0.001}",
)


def reference_run(folder: Path, *overrides: str):
    """The run named ft of DECIDING (and `overrides`) that never fails, trained in this process."""
    from service import train

    spec = make_spec(folder, *DECIDING, *overrides, name="ft")
    result = train.run(spec, echo=lambda line: None)
    assert result.ok, result.error
    assert any(d["reduced"] for d in result.decisions), "no LR reduction: retune DECIDING"
    return result


def make_spec(tmp_path: Path, *overrides: str, **base):
    """A small train spec on the bundled sample, written under tmp_path, with overrides."""
    raw = {
        "name": base.pop("name", "t"),
        "output": str(tmp_path / "results"),
        "data": {"source": "sample", "validation": "holdout"},
        "training": {"epochs": 3, "batch_size": 100, "seed": 7},
        "scaling": {"num_workers": 2},
        **base,
    }
    return validate_train(apply_overrides(raw, list(overrides)))


def tiny_model(lr: float = 0.01) -> keras.Model:
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=lr), loss="mse")
    return model


def stock_trace(spec, sequence) -> tuple[list[dict], object, object]:
    """Stock tf_keras ReduceLROnPlateau and EarlyStopping fed a run's global metrics, epoch by
    epoch, in one uninterrupted fit: what they decide and what they count.

    Returns (one row per epoch: lr after it, plateau_wait, stopping_wait, stop; the stock
    ReduceLROnPlateau; the stock EarlyStopping), epochs numbered from 1.
    """
    model = tiny_model(spec.model.learning_rate)
    reduce_lr = keras.callbacks.ReduceLROnPlateau(**spec.reduce_lr.model_dump()) if spec.reduce_lr else None
    early_stopping = keras.callbacks.EarlyStopping(**spec.early_stopping.model_dump()) if spec.early_stopping else None
    callbacks = keras.callbacks.CallbackList([cb for cb in (reduce_lr, early_stopping) if cb], model=model)
    callbacks.on_train_begin()
    rows = []
    for epoch, values in enumerate(sequence):
        callbacks.on_epoch_end(epoch, dict(values))
        rows.append({"epoch": epoch + 1, "lr": sync.get_lr(model), "stop": bool(model.stop_training),
                     "plateau_wait": reduce_lr.wait if reduce_lr else None,
                     "stopping_wait": early_stopping.wait if early_stopping else None})
        if model.stop_training:
            break
    callbacks.on_train_end()
    return rows, reduce_lr, early_stopping


def stock_replay(spec, sequence):
    """Stock tf_keras ReduceLROnPlateau and EarlyStopping fed the same global metrics.

    Returns (learning rate after each epoch, stop epoch or None, EarlyStopping's best epoch
    or None), epochs numbered from 1.
    """
    rows, _, early_stopping = stock_trace(spec, sequence)
    stop_epoch = rows[-1]["epoch"] if rows and rows[-1]["stop"] else None
    best_epoch = early_stopping.best_epoch + 1 if early_stopping is not None else None
    return [r["lr"] for r in rows], stop_epoch, best_epoch


def stock_trace_on(engine: str, spec, sequence) -> tuple[list[dict], Optional[int]]:
    """`stock_trace`'s rows on the stock callbacks of `engine`'s Keras (tf_keras, or Keras 3 for
    keras_jax, in a process of its own: tests/keras3_stack.py), and EarlyStopping's best epoch."""
    if engine == "tf_keras":
        rows, _, early_stopping = stock_trace(spec, sequence)
        return rows, early_stopping.best_epoch + 1 if early_stopping is not None else None
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(root / "tests" / "keras3_stack.py"), spec.model_dump_json(),
                           json.dumps(list(sequence))], capture_output=True, text=True, timeout=300, cwd=root,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])})
    assert "@@" in done.stdout, done.stderr[-3000:]
    found = json.loads(done.stdout.rsplit("@@", 1)[1])
    return found["rows"], found["best_epoch"]


def stock_replay_on(engine: str, spec, sequence):
    """`stock_replay` on the stock callbacks of `engine`'s Keras (`stock_trace_on`)."""
    rows, best_epoch = stock_trace_on(engine, spec, sequence)
    stop_epoch = rows[-1]["epoch"] if rows and rows[-1]["stop"] else None
    return [r["lr"] for r in rows], stop_epoch, best_epoch


# Loads a run's model.keras in a fresh process with the engine's Keras, and scores the test images.
SCORE_MODEL = r"""
import json, os, sys
engine, path, data = sys.argv[1:4]
if engine == "keras_jax":
    os.environ["KERAS_BACKEND"] = "jax"
    import keras
else:
    import tf_keras as keras
import numpy as np
from service import data as data_lib
splits = data_lib.load(data, "holdout", warn=lambda m: None)
model = keras.models.load_model(path)
probs = model.predict(splits.x_test.astype("float32") / 255.0, batch_size=4096, verbose=0)
print("@@" + json.dumps({"accuracy": float((probs.argmax(axis=1) == splits.y_test).mean()),
                         "layers": [type(layer).__name__ for layer in model.layers], "keras": keras.__version__}))
"""


def score_model_file(engine: str, path: Path, data: str) -> dict:
    """{accuracy, layers, keras} of a model.keras loaded in a fresh process (see SCORE_MODEL)."""
    done = subprocess.run([sys.executable, "-c", SCORE_MODEL, engine, str(path), data], capture_output=True, text=True,
                          timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert "@@" in done.stdout, done.stderr[-3000:]
    return json.loads(done.stdout.rsplit("@@", 1)[1])


def by_epoch(decisions):
    epochs: dict[int, list[dict]] = {}
    for d in decisions:
        epochs.setdefault(d["epoch"], []).append(d)
    return epochs


def checkpoints(spec) -> dict[int, Path]:
    """Every epoch checkpoint a run kept, by epoch."""
    return checkpoint.by_epoch(RunPaths.of(spec).checkpoints_dir)


def model_at(spec, directory: Path) -> keras.Model:
    """The seed model with the weights of one epoch's checkpoint."""
    model = build_model(spec.model, seed=spec.training.seed)
    checkpoint.load_weights(directory, model)
    return model


def exact_metrics(model, x, y) -> tuple[float, float]:
    """Loss and accuracy over a whole split in one process: the reference for global metrics."""
    probs = model.predict(x.astype("float32") / 255.0, batch_size=4096, verbose=0)
    onehot = np.eye(10, dtype="float32")[y]
    loss = keras.losses.categorical_crossentropy(onehot, probs).numpy().astype("float64")
    return float(loss.mean()), float((probs.argmax(axis=1) == y).mean())


def without_seconds(rows):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def plateau(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "service.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)
