"""Every shared callback, declared on an engine's Keras from one list.

The logic of each callback is engine-neutral (`deciding.py`, `replicas.py`, `reporting.py`); what
an engine adds is its Keras's base classes, so that its `fit` (or its own epoch loop driving a
`CallbackList`) accepts them, and the stock ReduceLROnPlateau and EarlyStopping that decide. The
classes are made here, once, from `SHARED` and `STOCK`, for whichever Keras an engine hands over.

Example::

    import tf_keras
    CALLBACKS = declare(tf_keras, read_lr=lambda m: tf_keras.backend.get_value(m.optimizer.learning_rate),
                        write_lr=lambda m, lr: tf_keras.backend.set_value(m.optimizer.learning_rate, lr))
    CALLBACKS.GlobalMetrics(collective, val)      # a tf_keras Callback
    deciding.build(spec, collective, rank, val, state, CALLBACKS.kinds)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

from service.core import deciding, replicas, reporting

# Callbacks on the engine's plain `keras.callbacks.Callback`.
SHARED = (deciding.GlobalMetrics, deciding.Consensus, reporting.ReportEachEpoch, reporting.PauseAfterEpoch,
          reporting.FailOnce, replicas.ReplicaCheck, replicas.PerturbOnce)
# Callbacks on the engine's own stock decider, by the name of that decider in `keras.callbacks`.
STOCK = ((deciding.ResumableReduceLROnPlateau, "ReduceLROnPlateau"),
         (deciding.ResumableEarlyStopping, "EarlyStopping"))


def lr_value(value: Any) -> float:
    """A learning rate read from a float32 variable, as the float32's shortest repr (0.01, not
    0.0099999998): the same number on every engine, in the decision record and the reports."""
    return float(str(np.float32(np.asarray(value))))


@dataclasses.dataclass(frozen=True)
class Callbacks:
    """An engine's callback classes (attributes by the shared class's name) and its decision stack."""

    GlobalMetrics: type
    Consensus: type
    ReportEachEpoch: type
    PauseAfterEpoch: type
    FailOnce: type
    ReplicaCheck: type
    PerturbOnce: type
    ResumableReduceLROnPlateau: type
    ResumableEarlyStopping: type
    kinds: deciding.Kinds
    get_lr: Callable[[Any], float]


def declare(keras: Any, *, read_lr: Callable[[Any], Any], write_lr: Callable[[Any, float], None],
            resolve_auto_mode: bool = False, module: str | None = None) -> Callbacks:
    """The shared callbacks as subclasses of `keras`' own classes.

    `read_lr(model)` gives the optimizer's learning rate as the framework holds it and
    `write_lr(model, lr)` sets it; `resolve_auto_mode` says whether the stock deciders get
    `mode: auto` resolved to min/max first (`deciding.Kinds`). `module` names the module the classes
    say they belong to (the engine's callbacks module), for their repr and for pickling.
    """
    def get_lr(model: Any) -> float:
        return lr_value(read_lr(model))

    def subclass(shared: type, base: type, extra: dict | None = None) -> type:
        namespace = {"__doc__": f"`{shared.__module__}.{shared.__name__}` on {keras.__name__}'s "
                                f"`{base.__name__}`.", "__module__": module or shared.__module__, **(extra or {})}
        return type(shared.__name__, (shared, base), namespace)

    lr_access = {"read_lr": staticmethod(get_lr), "write_lr": staticmethod(write_lr)}
    classes = {shared.__name__: subclass(shared, keras.callbacks.Callback,
                                         lr_access if shared is deciding.Consensus else None)
               for shared in SHARED}
    classes.update({shared.__name__: subclass(shared, getattr(keras.callbacks, stock)) for shared, stock in STOCK})
    kinds = deciding.Kinds(classes["GlobalMetrics"], classes["ResumableReduceLROnPlateau"],
                           classes["ResumableEarlyStopping"], classes["Consensus"], resolve_auto_mode=resolve_auto_mode)
    return Callbacks(**classes, kinds=kinds, get_lr=get_lr)
