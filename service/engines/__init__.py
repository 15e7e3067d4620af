"""Which engine trains in the workers: the one place that maps `training.engine` to the engine's
worker (`contract.EngineWorker`), a Ray Train backend and the workers' environment.

* `tf_keras` (the default): tf_keras 2.21 under MultiWorkerMirroredStrategy (`tf_keras/`).
* `keras_jax`: Keras 3 on JAX, processes joined by `jax.distributed` with gloo collectives on CPUs
  (`keras_jax/`), installed with the `jax` extra.

Each engine is a package here with the same file names for the same roles (`backend.py`,
`worker.py`, `model.py`, `state.py`, `collective.py`, `callbacks.py`, `export.py`); what an engine
provides is declared in `contract.py`, and every engine runs the one worker loop, `loop.py`. Adding
an engine is a folder here and an entry in `ENGINES`.

The driver, the spec, the reports, studies, jobs and the command line know only this module's
`Engine`; neither TensorFlow nor JAX is imported here or by anything the driver runs: each engine's
modules are imported in the workers.

Example::

    engine = engine_for(spec)           # EngineMissing (exit 2, one line) when its packages are not there
    DataParallelTrainer(engine.loop, backend_config=engine.backend_config(),
                        run_config=RunConfig(worker_runtime_env=engine.runtime_env(base_env), ...))
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import sys
from typing import Any

from service.errors import BadInput
from service.spec import TrainSpec


class EngineMissing(BadInput):
    """The spec's engine cannot run here: its packages are not installed (exit 2, before Ray starts)."""


@dataclasses.dataclass(frozen=True)
class Engine:
    """What the driver needs of an engine; each member names code that runs in the workers."""

    name: str
    worker_path: str    # "module:Class", the engine's `contract.EngineWorker` (imported only in the workers)
    backend_path: str   # "module:Class", a Ray Train BackendConfig (modules that import no ML framework)
    env: tuple[tuple[str, str], ...]   # set in every worker before anything is imported there
    packages: tuple[str, ...]          # modules the workers import; checked on the driver, never imported
    install: str        # how to get them, in words
    versions: tuple[tuple[str, str], ...] = ()  # summary.json's `versions` beside the default ones: (key, dist)
    unread: tuple[tuple[str, str], ...] = ()    # spec fields this engine does not read: (section.field, why)
    # What loading its model.keras needs, as pip requirements: (requirement, summary.json's `versions` key).
    model_requirements: tuple[tuple[str, str], ...] = ()

    @staticmethod
    def loop(config: dict) -> Any:
        """The Ray Train entry point, every engine's (`loop.py`); it imports the engine's worker
        module, and its framework, in the worker."""
        from service.engines.loop import train_loop_per_worker

        return train_loop_per_worker(config)

    def backend_config(self):
        module, _, name = self.backend_path.partition(":")
        return getattr(importlib.import_module(module), name)()

    def runtime_env(self, base: dict) -> dict:
        """`base` (the run's worker runtime env) with this engine's variables added."""
        return {**base, "env_vars": {**base.get("env_vars", {}), **dict(self.env)}}

    def unread_settings(self, spec: TrainSpec) -> list[str]:
        """One line for each field of `unread` that `spec` sets to other than its default: a setting
        this engine would otherwise ignore without a word (`plateau check` and every run print them)."""
        found = []
        for path, why in self.unread:
            section_name, _, field = path.partition(".")
            section = getattr(spec, section_name)
            value, default = getattr(section, field), type(section).model_fields[field].default
            if value != default:
                found.append(f"{path} {value} has no effect on training.engine {self.name}: {why}; remove it, "
                             f"or train with another engine")
        return found

    def requirements(self, versions: dict[str, Any]) -> list[str]:
        """The pip requirements of this engine's `model.keras`, pinned to `versions` (summary.json's)."""
        return [f"{requirement}=={versions[key]}" for requirement, key in self.model_requirements]

    def missing(self) -> list[str]:
        """The packages of `packages` that cannot be imported here (found without importing them)."""
        return [name for name in self.packages if not _installed(name)]


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # what an import of it would raise: as good as absent
        return False


# tf_keras is what the tf_keras engine imports, but Ray's TF helpers and any `tf.keras` reference
# must resolve to Keras 2 as well; Keras 3 cannot run MWMS.
LEGACY_KERAS = ("TF_USE_LEGACY_KERAS", "1")
# Keras 3 reads its backend when it is first imported in the worker: the runtime env sets it.
KERAS_ON_JAX = ("KERAS_BACKEND", "jax")

ENGINES = {
    "tf_keras": Engine("tf_keras", "service.engines.tf_keras.worker:Worker",
                       "service.engines.tf_keras.backend:TensorflowWorkers", env=(LEGACY_KERAS,),
                       packages=("tensorflow", "tf_keras"), install='pip install -e "."',
                       model_requirements=(("tensorflow", "tensorflow"), ("tf-keras", "tf_keras"))),
    "keras_jax": Engine("keras_jax", "service.engines.keras_jax.worker:Worker",
                        "service.engines.keras_jax.backend:JaxWorkers", env=(KERAS_ON_JAX,),
                        packages=("keras", "jax", "jaxlib"), install='pip install -e ".[jax]"',
                        versions=(("keras", "keras"), ("jax", "jax")),
                        model_requirements=(("keras", "keras"), ("jax[cpu]", "jax")),
                        unread=(("training.steps_per_execution", "an epoch is one jitted call (a step, for a model "
                                                                 "with a convolution)"),
                                ("scaling.collective", "JAX's processes use gloo between CPUs and NCCL between "
                                                       "GPUs"))),
}


def engine_for(spec: TrainSpec) -> Engine:
    """The spec's engine; EngineMissing when its packages are not installed here."""
    engine = ENGINES[spec.training.engine]
    missing = engine.missing()
    if missing:
        needs = " (on Python 3.11 or newer)" if engine.name == "keras_jax" and sys.version_info < (3, 11) else ""
        other = next(name for name in ENGINES if name != engine.name)
        raise EngineMissing(f"training.engine {engine.name}: {', '.join(missing)} not installed; {engine.install}"
                            f"{needs}, or train with training.engine: {other}")
    return engine


def check_available(*specs: TrainSpec) -> None:
    """EngineMissing (one line) when an engine of `specs` (a run, or a study's trials) cannot run here;
    nothing is imported."""
    for name in dict.fromkeys(spec.training.engine for spec in specs):
        engine_for(next(spec for spec in specs if spec.training.engine == name))

