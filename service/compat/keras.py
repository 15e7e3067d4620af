"""Keras 3's private parts that the keras_jax engine touches, and why. Keras itself is never
imported here: a function gets the optimizer it works on.

* `keras.optimizers.Adam._momentums` and `._velocities`: Adam's first and second moments, one
  variable per trainable weight in the model's weight order. Keras 3 has no public name for one
  slot of a weight, and the checkpoint's layout names each (`optimizer/m/model/<weight>`,
  `optimizer/v/model/<weight>`, as the tf_keras engine's): `engines/keras_jax/state.py`.

* `keras.src.backend.common.global_state`'s `global_random_seed` and `global_seed_generator`: the
  global seed `keras.utils.set_random_seed` sets, without the TensorFlow import that helper makes
  (`seed_keras`).

Example::

    momentums, velocities = adam_slots(model.optimizer)
"""

from __future__ import annotations

from typing import Any

ADAM_SLOTS = ("_momentums", "_velocities")


def adam_slots(optimizer: Any) -> tuple[list, list]:
    """Adam's moments (m) and velocities (v), in the model's trainable-weight order."""
    return getattr(optimizer, ADAM_SLOTS[0]), getattr(optimizer, ADAM_SLOTS[1])


# Keras 3's global random state, by the names `keras.utils.set_random_seed` sets (keras/src/utils/rng_utils.py).
GLOBAL_STATE_MODULE = "keras.src.backend.common.global_state"
GLOBAL_RANDOM_SEED = "global_random_seed"
GLOBAL_SEED_GENERATOR = "global_seed_generator"


def seed_keras(seed: int) -> None:
    """What `keras.utils.set_random_seed(seed)` does, less seeding TensorFlow: that helper imports
    TensorFlow wherever it is installed, seconds of a keras_jax worker's start for nothing. An
    initialiser or layer without a seed of its own then draws the same values on every rank."""
    import importlib
    import random

    import numpy as np

    global_state = importlib.import_module(GLOBAL_STATE_MODULE)
    global_state.set_global_attribute(GLOBAL_RANDOM_SEED, seed)
    global_state.set_global_attribute(GLOBAL_SEED_GENERATOR, None)  # made again from the seed when next used
    random.seed(seed)
    np.random.seed(seed)
