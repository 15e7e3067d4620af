"""Keras 3's private parts that the keras_jax engine touches, and why. Keras itself is never
imported here: a function gets the optimizer it works on.

* `keras.optimizers.Adam._momentums` and `._velocities`: Adam's first and second moments, one
  variable per trainable weight in the model's weight order. Keras 3 has no public name for one
  slot of a weight, and the checkpoint's layout names each (`optimizer/m/model/<weight>`,
  `optimizer/v/model/<weight>`, as the tf_keras engine's): `engines/keras_jax/state.py`.

Example::

    momentums, velocities = adam_slots(model.optimizer)
"""

from __future__ import annotations

from typing import Any

ADAM_SLOTS = ("_momentums", "_velocities")


def adam_slots(optimizer: Any) -> tuple[list, list]:
    """Adam's moments (m) and velocities (v), in the model's trainable-weight order."""
    return getattr(optimizer, ADAM_SLOTS[0]), getattr(optimizer, ADAM_SLOTS[1])
