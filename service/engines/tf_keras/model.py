"""The seed's model: 784 -> Dense(784, relu) -> Dropout(0.5) -> Dense(10, softmax), Adam(0.01).

We use tf_keras (Keras 2) rather than Keras 3: Keras 3 cannot train under
MultiWorkerMirroredStrategy ("Attempt to convert a value (PerReplica...)").

Data parallelism never changes the maths: every optimizer step is the step one process would
take on the whole global batch. Each replica holds a slice of the global batch (`BatchSplit`);
its loss is scaled so that the replicas' summed gradients are the mean over the global batch
even when the slices differ in size, and its dropout mask is its rows of one mask drawn for the
whole global batch. A run with 1, 2 or 3 workers therefore trains on the same batches with the
same masks, and a run that loses or gains a worker goes on with the same maths.

Example::

    split = BatchSplit.of(global_batch=200, workers=3)      # rows 0-66, 67-133, 134-199
    with strategy.scope():
        model = build_model(spec.model, seed=7, split=split)
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import tensorflow as tf
import tf_keras as keras

from service.compat.tensorflow import sync_to_numpy_or_python_type, validate_target_and_loss
from service.data import BatchSplit
from service.engines.building import model_of, seeded_dropout_layers
from service.engines.contract import DROPOUT
from service.spec import ModelSpec


def random_key(seed: int, stream: int, counter: int | tf.Tensor):
    """The key of stateless random op number `counter` (an epoch, a step) of one stream of a run."""
    return tf.stack([tf.constant(seed * 1009 + stream, tf.int64), tf.cast(counter, tf.int64)])


def scale_features(x: tf.Tensor):
    """The model's input, for training and evaluation: uint8 pixels 0..255 -> float32 in [0, 1];
    other features as float32."""
    if x.dtype == tf.uint8:
        return tf.cast(x, tf.float32) / 255.0
    return tf.cast(x, tf.float32)


def _replica_id():
    return tf.distribute.get_replica_context().replica_id_in_sync_group


class StepSeededDropout(keras.layers.Dropout):
    """Dropout whose mask is a pure function of (seed, optimizer step), drawn for the global batch.

    Stock Dropout draws from a stateful RNG, so a run resumed from a checkpoint would drop
    different units than the run that never stopped. Keyed on the optimizer's step counter
    (which lives in the checkpoint), the masks after a resume are the same ones; drawn for the
    whole global batch, of which each replica takes its own rows, they are the same whatever the
    number of workers.
    """

    def __init__(self, rate: float, seed: int = 0, split: Optional[BatchSplit] = None, **kwargs):
        super().__init__(rate, **kwargs)
        self.seed, self.split = seed, split
        self.stream = 0  # the layer's own random stream among the model's seeded dropouts (`build_model`)
        # A function, not the variable itself: an attribute holding the optimizer's step
        # counter would make Keras count it among this layer's weights.
        self._step = None

    def follow(self, optimizer: keras.optimizers.Optimizer) -> None:
        """Key the masks on `optimizer`'s step counter (call after compile)."""
        self._step = lambda: optimizer.iterations

    def call(self, inputs: tf.Tensor, training: bool | None = None):
        if not training or self.rate == 0 or self._step is None:
            return inputs
        key = random_key(self.seed, DROPOUT, self._step())
        if self.stream:
            key = tf.random.experimental.stateless_fold_in(key, self.stream)
        if self.split is None:  # one process holds the whole batch
            rows, first = tf.shape(inputs)[0], 0
        else:
            rows, first = self.split.global_batch, tf.gather(self.split.offsets, _replica_id())
        features = tf.shape(inputs)[1:]
        uniform = tf.random.stateless_uniform(tf.concat([[rows], features], 0), seed=key)
        begin = tf.concat([[first], tf.zeros_like(features)], 0)
        keep = tf.slice(uniform, begin, tf.shape(inputs)) >= self.rate
        return tf.where(keep, inputs / (1.0 - self.rate), tf.zeros_like(inputs))

    def get_config(self):
        return {**super().get_config(), "seed": 0}


class QuietSteps:
    """A model whose training step updates the metrics without reading them.

    Stock `train_step` returns every metric's result after every step. Under
    MultiWorkerMirroredStrategy a metric's totals are SyncOnRead variables, so each read is an
    all-reduce, and fit then sums each result across workers again ("auto" reduction): six
    small collectives per step (loss and accuracy), each waiting on the other process, beside
    the gradients' one. Nothing reads a step's values (fit runs with verbose=0 and no callback
    looks at a batch's logs), so the step returns only this worker's optimizer step, which
    needs no exchange ("first" reduction), and the epoch's values are read once, at its end,
    from the same totals: the same numbers in the epoch's logs, one exchange per epoch instead
    of six per step.

    Example::

        history = model.fit(dataset, epochs=2, steps_per_epoch=41, verbose=0)
        history.history["loss"]       # each epoch's, as stock Keras logs it (batch logs: {"step": ...})
    """

    STEP = "step"  # the one value a step reports

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.distribute_reduction_method = "first"

    def train_step(self, data: tuple[tf.Tensor, tf.Tensor]):
        # tf_keras's train_step, less its last line's `get_metrics_result()`.
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self.compute_loss(x, y, y_pred, sample_weight)
        validate_target_and_loss(self, y, loss)
        self.optimizer.minimize(loss, self.trainable_variables, tape=tape)
        self.compiled_metrics.update_state(y, y_pred, sample_weight)
        # Something must come back (fit's step loop carries it), and nothing that needs the
        # other workers: this worker's copy of the step counter.
        return {self.STEP: tf.identity(self.optimizer.iterations)}

    def _validate_and_get_metrics_result(self, logs: dict):
        # fit asks this at every epoch's end for the epoch's logs (tf_keras's own path for steps
        # whose returns are not the metrics): the metrics' totals, read once, on every rank.
        return sync_to_numpy_or_python_type(self.get_metrics_result())


class SeedModel(QuietSteps, keras.Sequential):
    """A Sequential with `QuietSteps`' training step (the seed's MLP, or a builder's Sequential).

    `functional(model)`: any other builder's model (its inputs, outputs and layers) with it.
    """

    @staticmethod
    def functional(model: keras.Model) -> keras.Model:
        return FunctionalModel(inputs=model.inputs, outputs=model.outputs)


class FunctionalModel(QuietSteps, keras.Model):
    """A functional model with `QuietSteps`' training step."""


def replica_scaled_loss(split: BatchSplit):
    """Keras's categorical cross-entropy times this replica's `BatchSplit.loss_factors`."""
    factors = tf.constant(split.loss_factors(), tf.float32)

    def categorical_crossentropy(y_true: tf.Tensor, y_pred: tf.Tensor):
        return keras.losses.categorical_crossentropy(y_true, y_pred) * tf.gather(factors, _replica_id())

    return categorical_crossentropy


def build_model(spec: ModelSpec, seed: int = 7, split: Optional[BatchSplit] = None, steps_per_execution: int = 1,
                input_shape: tuple[int, ...] = (784,), classes: int = 10) -> keras.Model:
    """The spec's model (its builder's, or the seed's MLP), compiled with Adam at the spec's learning
    rate, categorical cross-entropy and accuracy. Call inside the strategy's scope.

    Weights start from `seed` on every rank (MultiWorkerMirroredStrategy also broadcasts rank
    0's initial values, so the ranks agree even if seeding changes). `split` is how each global
    batch is shared among the replicas (None: one process, the whole batch).
    """
    keras.utils.set_random_seed(seed)

    def seeded_dropout(rate: float, **kwargs) -> StepSeededDropout:
        return StepSeededDropout(rate, seed=seed, split=split, **kwargs)

    built = model_of(spec, keras, seeded_dropout, input_shape, classes, seed)
    if isinstance(built, keras.Sequential):  # the same layers, so the same weight names
        model = SeedModel([keras.Input(shape=input_shape), *built.layers])
    else:
        model = SeedModel.functional(built)
    # An even split needs no scaling: Keras's own loss, exactly.
    loss = "categorical_crossentropy" if split is None or split.even else replica_scaled_loss(split)
    model.compile(
        loss=loss,
        optimizer=keras.optimizers.Adam(learning_rate=spec.learning_rate),
        metrics=["accuracy"],
        steps_per_execution=steps_per_execution,
    )
    # Each seeded dropout its own stream (two layers of one shape must not drop the same units),
    # keyed on the optimizer's step.
    for stream, layer in enumerate(seeded_dropout_layers(model, StepSeededDropout)):
        layer.stream = stream
        layer.follow(model.optimizer)
    return model


# ---------------------------------------------------------------------------------------------
# Global metrics: this rank's shard sums


class ShardEvaluator:
    """Loss and accuracy *sums* of a model over one rank's shard of a split.

    Sums (not means) are what can be added across ranks. The per-example loss is Keras's own
    categorical cross-entropy on the softmax output, so the global mean equals what
    `model.evaluate` reports on the whole split, up to float32 rounding of the sum order.
    """

    def __init__(self, model: keras.Model, x: np.ndarray, y: np.ndarray, classes: int, batch: int = 4096):
        self.model = model
        self.x, self.y, self.classes = x, y, classes
        self.batch = batch
        self._step = tf.function(self._sums, reduce_retracing=True)

    def _sums(self, x: tf.Tensor, y: tf.Tensor):
        probs = self.model(scale_features(x), training=False)
        onehot = tf.one_hot(tf.cast(y, tf.int32), self.classes)
        loss = keras.losses.categorical_crossentropy(onehot, probs)
        correct = tf.cast(tf.equal(tf.argmax(probs, axis=-1, output_type=tf.int32), tf.cast(y, tf.int32)), tf.float64)
        return tf.reduce_sum(tf.cast(loss, tf.float64)), tf.reduce_sum(correct)

    def sums(self) -> np.ndarray:
        """[loss sum, correct count, example count] over this shard."""
        total = np.zeros(3)
        for start in range(0, len(self.x), self.batch):
            loss, correct = self._step(self.x[start : start + self.batch], self.y[start : start + self.batch])
            total += (float(loss), float(correct), 0.0)
        total[2] = len(self.x)
        return total
