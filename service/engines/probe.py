"""A user's model tried before Ray starts: built by its engine, in a process of its own, and fed two
examples of the data's shape. A builder that fails, a model that does not take the data's shape,
or one that does not give one probability per class is one line (exit 2) before any worker starts.

The driver never imports a framework itself: `check_model` runs this module as a program with the
engine's environment, and reads back one JSON line.

Example::

    check_model(spec, engine, input_shape=(28, 28), classes=10, dtype="uint8")   # ModelRefused, or None
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from service.errors import BadInput

PROBE_TIMEOUT_S = 300.0  # importing a framework and building a model; a builder that hangs is refused


class ModelRefused(BadInput):
    """The spec's model cannot train on the spec's data (exit 2, before Ray starts)."""


def check_model(spec: Any, engine: Any, input_shape: tuple[int, ...], classes: int, dtype: str) -> None:
    """ModelRefused with the probe's line when `spec.model.build`'s model cannot take the data."""
    request = {"spec": spec.model_dump(mode="json"), "input_shape": list(input_shape), "classes": classes,
               "dtype": dtype}
    # The probe imports what this process can import (a job's uploaded code, a test's folders),
    # whatever its working directory.
    env = {**os.environ, **dict(engine.env), "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": os.pathsep.join(path for path in sys.path if path)}
    try:
        done = subprocess.run([sys.executable, "-m", "service.engines.probe"], input=json.dumps(request),
                              capture_output=True, text=True, env=env, timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ModelRefused(f"model.build {spec.model.build}: building the model took over {PROBE_TIMEOUT_S:.0f} s; "
                           "check the builder") from None
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    answer = json.loads(lines[-1]) if lines else {"error": _last_line(done.stderr) or "the probe gave no answer"}
    if "error" in answer:
        raise ModelRefused(f"model.build {spec.model.build}: {answer['error']}")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def probe(request: dict) -> str | None:
    """Build the model as a one-worker run would and run it on two zero examples; the problem in one
    line, or None."""
    import numpy as np

    from service import data as data_lib
    from service.engines.loop import engine_worker
    from service.spec import TrainSpec

    spec = TrainSpec.model_validate(request["spec"])
    shape, classes = tuple(request["input_shape"]), int(request["classes"])
    engine = engine_worker(spec, 0, 1)
    try:
        model = engine.build_model(data_lib.BatchSplit.of(spec.training.batch_size, 1), shape, classes)
    except Exception as exc:  # noqa: BLE001 - whatever the user's builder raises becomes the line
        return f"building the model failed: {type(exc).__name__}: {_first_line(exc)}"
    examples = np.zeros((2, *shape), request["dtype"])
    try:
        probs = model(examples.astype("float32"), training=False)
    except Exception as exc:  # noqa: BLE001
        return (f"the model does not take examples of shape {shape} (the data's): {type(exc).__name__}: "
                f"{_first_line(exc)}")
    if tuple(probs.shape) != (2, classes):
        return (f"the model gives outputs of shape {tuple(probs.shape)[1:]} per example, not ({classes},): its last "
                f"layer must give one probability per class (Dense({classes}, activation='softmax'))")
    if not np.isfinite(engine.evaluator(model, examples, np.zeros(2, np.int64)).sums()).all():
        return "the model's loss on zero inputs is not finite: its last layer must give probabilities (softmax)"
    return None


def _first_line(exc: BaseException) -> str:
    """The line of an exception's message that says what is wrong (TensorFlow's start with a
    heading such as "in user code:" and end with the cause)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return "(no message)"
    return lines[-1] if lines[0].endswith(":") else lines[0]


if __name__ == "__main__":
    problem = probe(json.loads(sys.stdin.read()))
    print(json.dumps({"error": problem} if problem else {"ok": True}), flush=True)
