"""The seed's model: 784 -> Dense(784, relu) -> Dropout(0.5) -> Dense(10, softmax), Adam(0.01).

We use tf_keras (Keras 2) rather than Keras 3: Keras 3 cannot train under
MultiWorkerMirroredStrategy ("Attempt to convert a value (PerReplica...)").

Example::

    with strategy.scope():
        model = build_model(spec.model, seed=7, rank=0)
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras as keras

from service.spec import ModelSpec


def random_stream(seed: int, rank: int) -> int:
    """The id of a rank's random stream (its data order and dropout masks) for a run's seed."""
    return seed * 1009 + rank


def scale_pixels(x):
    """uint8 pixels 0..255 -> float32 in [0, 1]: the model's input, for training and evaluation."""
    return tf.cast(x, tf.float32) / 255.0


class StepSeededDropout(keras.layers.Dropout):
    """Dropout whose mask is a pure function of (seed, rank, optimizer step).

    Stock Dropout draws from a stateful RNG, so a run resumed from a checkpoint would drop
    different units than the run that never stopped. Keyed on the optimizer's step counter
    (which lives in the checkpoint), the masks after a resume are the same ones. Each rank
    gets its own stream, as each rank sees different examples.
    """

    def __init__(self, rate: float, seed: int = 0, rank: int = 0, **kwargs):
        super().__init__(rate, **kwargs)
        self.stream = random_stream(seed, rank)
        # A function, not the variable itself: an attribute holding the optimizer's step
        # counter would make Keras count it among this layer's weights.
        self._step = None

    def follow(self, optimizer) -> None:
        """Key the masks on `optimizer`'s step counter (call after compile)."""
        self._step = lambda: optimizer.iterations

    def call(self, inputs, training=None):
        if not training or self.rate == 0 or self._step is None:
            return inputs
        key = tf.stack([tf.constant(self.stream, tf.int64), tf.cast(self._step(), tf.int64)])
        return tf.nn.experimental.stateless_dropout(inputs, rate=self.rate, seed=key)

    def get_config(self):
        return {**super().get_config(), "seed": 0, "rank": 0}


def build_model(spec: ModelSpec, seed: int = 7, rank: int = 0, steps_per_execution: int = 1) -> keras.Model:
    """The seed's MLP, compiled. Call inside the strategy's scope.

    Weights start from `seed` on every rank (MultiWorkerMirroredStrategy also broadcasts rank
    0's initial values, so the ranks agree even if seeding changes).
    """
    keras.utils.set_random_seed(seed)
    # 'normal' in the seed = RandomNormal(stddev=0.05); pin seeds so every rank builds the same.
    init = lambda k: keras.initializers.RandomNormal(mean=0.0, stddev=0.05, seed=seed + k)  # noqa: E731
    dropout = StepSeededDropout(spec.dropout, seed=seed, rank=rank)
    model = keras.Sequential(
        [
            keras.Input(shape=(784,)),
            keras.layers.Dense(spec.hidden_units, activation="relu", kernel_initializer=init(0)),
            dropout,
            keras.layers.Dense(10, activation="softmax", kernel_initializer=init(1)),
        ]
    )
    model.compile(
        loss="categorical_crossentropy",
        optimizer=keras.optimizers.Adam(learning_rate=spec.learning_rate),
        metrics=["accuracy"],
        steps_per_execution=steps_per_execution,
    )
    dropout.follow(model.optimizer)
    return model
