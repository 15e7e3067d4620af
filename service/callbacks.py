"""The tf_keras engine's callbacks that are not about synchronisation (that is `sync`): the
engine-agnostic logic of `service/deciding.py` and `service/reporting.py` on tf_keras's classes.

* `ResumableReduceLROnPlateau`, `ResumableEarlyStopping`: the stock tf_keras callbacks, unchanged
  in what they decide, that can hand over their state to a checkpoint and take it back;
* `ReportEachEpoch`: every epoch's report to Ray Train (with the checkpoint) and to the driver;
* `FailOnce`, `PauseAfterEpoch`: drills, added only when a spec asks for them;
* `ReplicaCheck` and its drill `PerturbOnce` (`service/replicas.py`).

Example::

    reduce_lr = ResumableReduceLROnPlateau(monitor="val_accuracy", factor=0.1, patience=1)
    reduce_lr.load_state_dict(saved)   # applied right after Keras's reset in on_train_begin
    model.fit(..., callbacks=[..., reduce_lr, ...])
    reduce_lr.state_dict()             # {"best": 0.9375, "wait": 1, "cooldown_counter": 0}
"""

from __future__ import annotations

import tf_keras as keras

from service import deciding, replicas, reporting
from service.reporting import DriverQueue  # noqa: F401 - the worker loop's line to the driver


class ResumableReduceLROnPlateau(deciding.ResumableReduceLROnPlateau, keras.callbacks.ReduceLROnPlateau):
    """tf_keras `ReduceLROnPlateau` whose `best`, `wait` and `cooldown_counter` survive a restart."""


class ResumableEarlyStopping(deciding.ResumableEarlyStopping, keras.callbacks.EarlyStopping):
    """tf_keras `EarlyStopping` whose state survives a restart and that says why it stopped."""


class ReportEachEpoch(reporting.ReportEachEpoch, keras.callbacks.Callback):
    """`reporting.ReportEachEpoch` on a tf_keras callback."""


class PauseAfterEpoch(reporting.PauseAfterEpoch, keras.callbacks.Callback):
    """`reporting.PauseAfterEpoch` on a tf_keras callback."""


class FailOnce(reporting.FailOnce, keras.callbacks.Callback):
    """`reporting.FailOnce` on a tf_keras callback."""


class ReplicaCheck(replicas.ReplicaCheck, keras.callbacks.Callback):
    """`replicas.ReplicaCheck` on a tf_keras callback."""


class PerturbOnce(replicas.PerturbOnce, keras.callbacks.Callback):
    """`replicas.PerturbOnce` on a tf_keras callback."""
