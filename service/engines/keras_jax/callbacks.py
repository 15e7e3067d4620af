"""The keras_jax engine's callbacks: every engine's logic (`service/deciding.py`,
`service/reporting.py`) on Keras 3's classes, the stock deciders included.

Keras 3 reads a `mode: auto` monitor's direction from the compiled metrics, which this engine's
loop never builds: the stack gets it resolved to min or max by the spec's own rule (the same
answer for the metrics the model produces).

Example::

    deciders = deciding.build(spec, collective, rank, val, saved_state, KERAS_JAX)
"""

from __future__ import annotations

import keras
import numpy as np

from service import deciding, replicas, reporting


def get_lr(model: keras.Model) -> float:
    # The variable is float32; str() of a float32 is its shortest repr (0.01, not 0.0099999998).
    return float(str(np.float32(np.asarray(model.optimizer.learning_rate))))


def set_lr(model: keras.Model, lr: float) -> None:
    model.optimizer.learning_rate = lr


class GlobalMetrics(deciding.GlobalMetrics, keras.callbacks.Callback):
    """`deciding.GlobalMetrics` on a Keras 3 callback."""


class Consensus(deciding.Consensus, keras.callbacks.Callback):
    """`deciding.Consensus` on a Keras 3 callback."""

    read_lr = staticmethod(get_lr)
    write_lr = staticmethod(set_lr)


class ResumableReduceLROnPlateau(deciding.ResumableReduceLROnPlateau, keras.callbacks.ReduceLROnPlateau):
    """Keras 3 `ReduceLROnPlateau` whose state survives a restart."""


class ResumableEarlyStopping(deciding.ResumableEarlyStopping, keras.callbacks.EarlyStopping):
    """Keras 3 `EarlyStopping` whose state survives a restart and that says why it stopped."""


class ReportEachEpoch(reporting.ReportEachEpoch, keras.callbacks.Callback):
    """`reporting.ReportEachEpoch` on a Keras 3 callback."""


class PauseAfterEpoch(reporting.PauseAfterEpoch, keras.callbacks.Callback):
    """`reporting.PauseAfterEpoch` on a Keras 3 callback."""


class FailOnce(reporting.FailOnce, keras.callbacks.Callback):
    """`reporting.FailOnce` on a Keras 3 callback."""


class ReplicaCheck(replicas.ReplicaCheck, keras.callbacks.Callback):
    """`replicas.ReplicaCheck` on a Keras 3 callback."""


class PerturbOnce(replicas.PerturbOnce, keras.callbacks.Callback):
    """`replicas.PerturbOnce` on a Keras 3 callback."""


KERAS_JAX = deciding.Kinds(GlobalMetrics, ResumableReduceLROnPlateau, ResumableEarlyStopping, Consensus,
                           resolve_auto_mode=True)
