"""The keras_jax engine's callbacks: every engine's callbacks (`service/core/callbacks.py`'s
list) on Keras 3's classes, the stock deciders included.

Keras 3 reads a `mode: auto` monitor's direction from the compiled metrics, which this engine's
loop never builds: the stack gets it resolved to min or max by the spec's own rule (the same
answer for the metrics the model produces).

Example::

    deciders = deciding.build(spec, collective, rank, val, saved_state, CALLBACKS.kinds)
"""

from __future__ import annotations

import keras

from service.core.callbacks import declare


def _set_lr(model: keras.Model, lr: float) -> None:
    model.optimizer.learning_rate = lr


CALLBACKS = declare(keras, read_lr=lambda model: model.optimizer.learning_rate, write_lr=_set_lr,
                    resolve_auto_mode=True, module=__name__)
KERAS_JAX = CALLBACKS.kinds
get_lr = CALLBACKS.get_lr
