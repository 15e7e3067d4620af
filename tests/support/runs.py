"""Small runs on the bundled sample, and readers of a finished run: its checkpoints, its
decisions, exact metrics of its weights, its TensorBoard events, its model file.

Example::

    spec = make_spec(tmp_path, "training.epochs=2", name="two")
    result = train.run(spec, echo=lambda line: None)
    kept = checkpoints(spec)            # epoch -> checkpoint folder
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from service.spec import apply_overrides, validate_train
from tests.support.project import program_json

# Both callbacks active with state worth losing: waits and a reduced learning rate.
DECIDING = (
    "training.epochs=5",
    "reduce_lr={monitor: val_loss, factor: 0.5, patience: 1, min_delta: 0.01}",
    "early_stopping={monitor: val_accuracy, patience: 3, min_delta: 0.001}",
)


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


def reference_run(folder: Path, *overrides: str):
    """The run named ft of DECIDING (and `overrides`) that never fails, trained in this process."""
    from service import train

    spec = make_spec(folder, *DECIDING, *overrides, name="ft")
    result = train.run(spec, echo=lambda line: None)
    assert result.ok, result.error
    assert any(d["reduced"] for d in result.decisions), "no LR reduction: retune DECIDING"
    return result


def by_epoch(decisions):
    epochs: dict[int, list[dict]] = {}
    for d in decisions:
        epochs.setdefault(d["epoch"], []).append(d)
    return epochs


def without_seconds(rows):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def checkpoints(spec) -> dict[int, Path]:
    """Every epoch checkpoint a run kept, by epoch."""
    from service.checkpoints import resume
    from service.rundir import RunPaths

    return resume.by_epoch(RunPaths.of(spec).checkpoints_dir)


def model_at(spec, directory: Path, input_shape: tuple[int, ...] = (784,), classes: int = 10):
    """The spec's model, built with tf_keras whatever the run's engine (the checkpoint's names are
    every engine's), with the weights of one epoch's checkpoint."""
    from service.checkpoints import layout
    from service.engines.tf_keras.model import build_model

    model = build_model(spec.model, seed=spec.training.seed, input_shape=input_shape, classes=classes)
    layout.load_weights(directory, model)
    return model


def exact_metrics(model, x, y) -> tuple[float, float]:
    """Loss and accuracy over a whole split in one process: the reference for global metrics."""
    import tf_keras as keras

    features = x.astype("float32") / 255.0 if x.dtype == np.uint8 else x.astype("float32")  # as the engines scale
    probs = model.predict(features, batch_size=4096, verbose=0)
    onehot = np.eye(probs.shape[1], dtype="float32")[y]
    loss = keras.losses.categorical_crossentropy(onehot, probs).numpy().astype("float64")
    return float(loss.mean()), float((probs.argmax(axis=1) == y).mean())


def score_model_file(engine: str, path: Path, data: str, spec_file: Path | None = None) -> dict:
    """{accuracy, layers, keras} of a model.keras loaded in a fresh process with the engine's Keras
    (programs/score_model.py); with the run's spec.yaml, on the data as the run read it."""
    return program_json("score_model", engine, str(path), data, *([str(spec_file)] if spec_file else []))


def read_events(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] from every event file in logdir (TensorFlow's own reader)."""
    import tensorflow as tf

    out: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                out.setdefault(value.tag, []).append((event.step, round(value.simple_value, 6)))
    return out
