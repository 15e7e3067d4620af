"""TensorFlow and JAX stay in the workers: importing the driver's modules (both engines' backends
and the module that chooses them included) loads neither TensorFlow, tf_keras, Keras 3 nor JAX (see docs/how-it-works.md, "TensorFlow only in the workers", and docs/speed.md for what
the import cost at start-up). Fast: one fresh interpreter that imports Ray, no Ray started."""

from __future__ import annotations

import json
import re
import os
import subprocess
import sys
from pathlib import Path
from tests.support.limits import PROGRAM_S

ROOT = Path(__file__).resolve().parent.parent

DRIVER_MODULES = ["service.train", "service.engines.tf_keras.backend", "service.engines", "service.engines.keras_jax.backend",
                  "service.compare.study", "service.compare.trials", "service.jobs", "service.cli"]
WORKER_ONLY = ["tensorflow", "tf_keras", "keras", "jax", "jaxlib"]

PROBE = f"""
import importlib, json, sys
for name in {DRIVER_MODULES!r}:
    importlib.import_module(name)
print(json.dumps(sorted({{m.split(".")[0] for m in sys.modules}} & set({WORKER_ONLY!r}))))
"""


def test_driver_modules_do_not_import_tensorflow():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=PROGRAM_S)
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded == [], f"importing {', '.join(DRIVER_MODULES)} loaded {', '.join(loaded)}"


def test_only_the_command_line_imports_the_studies_package_from_outside_it():
    """compare/ sits on top of the driver's modules: below it, nothing reaches up into it."""
    service = ROOT / "service"
    reaching_up = [str(path.relative_to(ROOT)) for path in sorted(service.rglob("*.py"))
                   if path.parent != service / "compare" and path != service / "cli.py"
                   and re.search(r"service\.compare\b|from service import .*\bcompare\b", path.read_text())]
    assert reaching_up == []
