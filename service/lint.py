"""Spec lint: settings that validate but cannot do what they say. Each finding is one line.

A spec can be valid and still pointless: an EarlyStopping that always stops before
ReduceLROnPlateau gets to act, a floor on the learning rate above the rate itself, a start epoch
past the last epoch. `plateau check` prints these findings; train, compare and submit print them
too (as `warning: ...` lines on stderr) and go on.

Example::

    for line in lint(load_spec("jobs/seed-reduce-lr.yaml")):
        print(f"warning: {line}")
"""

from __future__ import annotations

from typing import Optional

from service.engines import ENGINES
from service.spec import CompareSpec, ModelSpec, MonitoredSpec, Spec, TrainSpec, higher_is_better

# The seed's own advice, quoted where it applies.
SEED_ADVICE = "EarlyStopping's patience must be larger than ReduceLROnPlateau's, or the callback has no effect"


def inferred_mode(monitor: str, auto_rule: str = "ReduceLROnPlateau") -> Optional[str]:
    """The direction `mode: auto` should mean for a metric: max where the callback's own rule
    (`spec.higher_is_better`) maximises it, min for a loss, None when the name does not say."""
    if higher_is_better(monitor, "auto", auto_rule):
        return "max"
    if "loss" in monitor:
        return "min"
    return None


def _mode_findings(section: str, monitored: MonitoredSpec) -> list[str]:
    monitor, mode = monitored.monitor, monitored.mode
    direction = inferred_mode(monitor, monitored.auto_rule)
    if direction is None and mode == "auto":
        return [f"{section}.monitor {monitor}: mode auto cannot tell whether higher is better "
                f"(tf_keras would take it as lower); set {section}.mode to min or max"]
    if direction is not None and mode not in ("auto", direction):
        better = "higher" if direction == "max" else "lower"
        return [f"{section}.mode {mode} on {monitor}: a {better} {monitor} is better, so the callback would "
                f"count every improvement as a step back; use mode {direction} or auto"]
    return []


def lint_train(spec: TrainSpec) -> list[str]:
    """The findings for one train spec, in the order of its sections."""
    found: list[str] = []
    stop, reduce = spec.early_stopping, spec.reduce_lr
    if stop is not None and reduce is not None and stop.monitor == reduce.monitor \
            and stop.patience <= reduce.patience + reduce.cooldown:
        found.append(f"early_stopping.patience {stop.patience} is not larger than reduce_lr.patience "
                     f"{reduce.patience} + reduce_lr.cooldown {reduce.cooldown} on {stop.monitor}: EarlyStopping "
                     f"stops before a lowered rate can help (the seed: \"{SEED_ADVICE}\")")
    if reduce is not None and reduce.min_lr >= spec.model.learning_rate:
        found.append(f"reduce_lr.min_lr {reduce.min_lr:g} is not below model.learning_rate "
                     f"{spec.model.learning_rate:g}: ReduceLROnPlateau can never lower the rate")
    if stop is not None and stop.start_from_epoch >= spec.training.epochs:
        found.append(f"early_stopping.start_from_epoch {stop.start_from_epoch} is not below training.epochs "
                     f"{spec.training.epochs}: EarlyStopping never looks at an epoch")
    for name, section in (("reduce_lr", reduce), ("early_stopping", stop)):
        if section is not None:
            found += _mode_findings(name, section)
    return found + _model_findings(spec) + ENGINES[spec.training.engine].unread_settings(spec)


def _model_findings(spec: TrainSpec) -> list[str]:
    """Fields the model in use never reads: the built-in model's beside a builder, and back."""
    model = spec.model
    if model.build is None:
        unread = [f"model.kwargs {sorted(model.kwargs)}"] if model.kwargs else []
        unread += [f"data.shape {spec.data.shape}"] if spec.data.shape is not None else []
        return [f"{field}: only a model of your own (model.build) reads it; the built-in model takes 784 pixels "
                f"and model.hidden_units, model.dropout" for field in unread]
    builtin = [f"model.{name} {getattr(model, name):g}" for name in ("hidden_units", "dropout")
               if getattr(model, name) != ModelSpec.model_fields[name].default]
    return [f"{field}: only the built-in model reads it, and model.build names your own; give your model's "
            f"settings in model.kwargs" for field in builtin]


def lint(spec: Spec) -> list[str]:
    """A train spec's findings; for a study, each setting's (prefixed with the setting), once."""
    if isinstance(spec, TrainSpec):
        return lint_train(spec)
    assert isinstance(spec, CompareSpec)
    from service.grid import expand

    found: dict[str, None] = {}
    for trial in expand(spec):
        for line in lint_train(trial.spec):
            found[f"{trial.setting.label}: {line}"] = None
    return list(found)
