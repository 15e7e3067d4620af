"""The keras_jax engine's model and its jitted maths: any Keras 3 model, trained over the processes.

The model is the spec's (its builder's, or the seed's MLP: 784 -> Dense 784 relu -> dropout 0.5
-> Dense 10 softmax), compiled with Adam: its variables hold the weights and Adam's state between
epochs, the stock callbacks read and change it, and rank 0 saves it as the run's `model.keras`. An
epoch runs as one jitted function over every process (`Epoch`): a `lax.scan` of the steps inside
`shard_map` over a mesh of one CPU device per process, where each process holds its rows of every
global batch, and each step is the model's own forward pass (`stateless_call`). A model with a
convolution calls the same function once a step on CPUs instead (`steps_per_call`).

Data parallelism never changes the maths, whatever the number of workers:

* each rank's loss is the sum of its rows' losses over the *global* batch size, and the ranks'
  gradients are summed (`psum`): the mean over the global batch, also for 200 over 3 (67/67/66);
* a `SeededDropout`'s mask is drawn for the whole global batch from a (seed, optimizer step) key,
  and each rank takes its rows of it (a stock `Dropout` draws per rank: see docs/your-model.md);
* epoch e's order of the training examples is a pure function of (seed, e) (`epoch_order`).

Ranks hold the same number of rows per step (the largest share), padded with zero-weight rows, so
that every process runs the same program.

A process compiles an epoch once for every run it trains of the same program (`compiled`): a
study's warm trials of one model differ in their seed and weights, which are the function's
arguments, not in what it computes.

Example::

    model = build_model(spec.model, seed=7, input_shape=(784,), classes=10)
    epoch = Epoch(model, mesh, split=BatchSplit.of(200, 3), rank=1, seed=7, classes=10)
    logs = epoch.run(x_train, y_train, epoch_order(7, 0, len(x_train), steps, 200))  # {"loss": ..., "accuracy": ...}
"""

from __future__ import annotations

import contextlib
import json
from typing import Any, Callable

import jax
import jax.numpy as jnp
import keras
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from service.data import BatchSplit
from service.compat.keras import seed_keras
from service.engines.building import model_of, seeded_dropout_layers
from service.engines.contract import DATA_ORDER, DROPOUT
from service.spec import ModelSpec

AXIS = "ranks"  # the mesh's one axis: a device per process, in rank order


class SeededDropout(keras.layers.Layer):
    """Dropout whose mask is this rank's rows of one mask drawn for the whole global batch from
    (seed, optimizer step): the same masks whatever the number of workers, and after a resume.

    It draws only inside the engine's epoch (`Epoch`, which says how); at inference it passes its
    input through, as Dropout does. The exported model has a stock `Dropout` in its place.

    Example (in a builder that asks for `seeded_dropout`)::

        x = seeded_dropout(0.5)(x)
    """

    def __init__(self, rate: float, **kwargs):
        super().__init__(**kwargs)
        self.rate = float(rate)
        self.stream = 0  # the layer's own random stream among the model's seeded dropouts (`build_model`)

    def call(self, inputs: jax.Array, training: bool = False) -> jax.Array:
        if not training or self.rate == 0:
            return inputs
        if _MASKS is None:
            raise RuntimeError("SeededDropout draws its masks in plateau's epoch only; the exported model "
                               "has a stock Dropout")
        keep = _MASKS.keep(tuple(inputs.shape[1:]), self.rate, self.stream)
        return jnp.where(keep, inputs / (1.0 - self.rate), 0.0)

    def get_config(self) -> dict:
        return {**super().get_config(), "rate": self.rate}


class StepMasks:
    """How `SeededDropout` draws inside one training step: the step's key, the global batch, this
    rank's rows (`rows`, padded) and the first of them (`first`, a traced value)."""

    def __init__(self, key: jax.Array, global_batch: int, rows: int, first: jax.Array):
        self.key, self.global_batch, self.rows, self.first = key, global_batch, rows, first

    def keep(self, shape: tuple[int, ...], rate: float, stream: int) -> jax.Array:
        key = self.key if stream == 0 else jax.random.fold_in(self.key, stream)
        uniform = jax.random.uniform(key, (self.global_batch, *shape))
        # The zero rows below it keep the slice in bounds for a padded rank (its padding has weight 0).
        uniform = jnp.concatenate([uniform, jnp.zeros((self.rows, *shape), uniform.dtype)])
        start = (self.first, *([0] * len(shape)))
        return jax.lax.dynamic_slice(uniform, start, (self.rows, *shape)) >= rate


_MASKS: StepMasks | None = None  # set while `Epoch` traces a step's forward pass


@contextlib.contextmanager
def drawing(masks: StepMasks):
    """`SeededDropout` layers draw from `masks` inside this block (the block runs while JAX traces)."""
    global _MASKS
    before, _MASKS = _MASKS, masks
    try:
        yield
    finally:
        _MASKS = before


def build_model(spec: ModelSpec, seed: int = 7, input_shape: tuple[int, ...] = (784,), classes: int = 10
                ) -> keras.Model:
    """The spec's model (its builder's, or the seed's MLP), compiled with Adam at the spec's learning
    rate, categorical cross-entropy and accuracy, with Adam's state built.

    Weights start from `seed` on every rank: every process builds the same values without any
    exchange. TensorFlow is never imported.
    """
    # Not keras.utils.set_random_seed: that helper imports TensorFlow (it seeds it too).
    seed_keras(seed)
    model = model_of(spec, keras, SeededDropout, input_shape, classes, seed)
    # Each seeded dropout its own stream: two layers of one shape must not drop the same units.
    for stream, layer in enumerate(seeded_dropout_layers(model, SeededDropout)):
        layer.stream = stream
    model.compile(loss="categorical_crossentropy", optimizer=keras.optimizers.Adam(learning_rate=spec.learning_rate),
                  metrics=["accuracy"])
    model.optimizer.build(model.trainable_variables)
    return model


def scale_features(x: jax.Array) -> jax.Array:
    """The model's input: uint8 pixels 0..255 -> float32 in [0, 1] (as the tf_keras engine scales
    them); other features as float32."""
    if x.dtype == jnp.uint8:
        return x.astype(jnp.float32) / 255.0
    return x.astype(jnp.float32)


def example_losses(probs: jax.Array, labels: jax.Array, classes: int) -> jax.Array:
    """Keras's categorical cross-entropy of each example (the loss the model is compiled with)."""
    return keras.losses.categorical_crossentropy(jax.nn.one_hot(labels, classes), probs)


def epoch_order(seed: int, epoch: int, n: int, steps: int, global_batch: int) -> np.ndarray:
    """Epoch `epoch`'s global batches (steps x global_batch image indices): a pure function of
    (seed, epoch), whatever the number of workers; a resumed run trains on the same batches."""
    order = np.random.default_rng([seed, DATA_ORDER, epoch]).permutation(n)
    return order[: steps * global_batch].reshape(steps, global_batch)


def make_mesh() -> Mesh:
    """A device per process, in process (= rank) order: the local CPU of each."""
    devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    firsts = [next(d for d in devices if d.process_index == p) for p in range(jax.process_count())]
    return Mesh(np.array(firsts), (AXIS,))


def rank_rows(batches: np.ndarray, split: BatchSplit, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """`rank`'s rows of every global batch (image indices), padded to the largest share, and their
    weights: 1 for its rows, 0 for the padding (image 0, which then counts for nothing)."""
    first, size, rows = split.offsets[rank], split.sizes[rank], max(split.sizes)
    idx = np.zeros((len(batches), rows), np.int64)
    idx[:, :size] = batches[:, first:first + size]
    weight = np.zeros((len(batches), rows), np.float32)
    weight[:, :size] = 1.0
    return idx, weight


_COMPILED: dict[str, Callable] = {}  # this process's jitted functions, by what their program depends on


def program_key(model: keras.Model, *parts: Any) -> str | None:
    """What a jitted function of `model` computes, as a key: its layers and their settings (names
    included: `build_model` starts each model from Keras's cleared counters), its optimizer's
    settings but the learning rate (a variable, an argument), and `parts`. None when the model
    cannot say (a layer without a config): its functions are then its own."""
    try:
        optimizer = {k: v for k, v in model.optimizer.get_config().items() if k not in ("learning_rate", "name")}
        return json.dumps([model.to_json(), optimizer, type(model.optimizer).__name__, *map(repr, parts)],
                          sort_keys=True, default=repr)
    except (NotImplementedError, TypeError, ValueError):
        return None


def compiled(key: str | None, make: Callable[[], Callable]) -> Callable:
    """The jitted function for `key`, made by `make` the first time this process asks for it (it
    then traces the model it was made from: a model of the same key has the same program)."""
    if key is None:
        return make()
    if key not in _COMPILED:
        _COMPILED[key] = make()
    return _COMPILED[key]


# Layers that XLA on CPUs runs several times slower inside a loop (an epoch's `lax.scan`) than
# at the top of a jitted call: examples/cnn.py took 33-37 s an epoch of the sample scanned against
# 6.3-7.6 s called once a step (docs/speed.md), while the seed's MLP is faster scanned (so it keeps
# its one call an epoch).
SLOW_IN_A_LOOP = tuple(getattr(keras.layers, name) for name in (
    "Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose",
    "DepthwiseConv1D", "DepthwiseConv2D", "SeparableConv1D", "SeparableConv2D"))


def steps_per_call(model: keras.Model, mesh: Mesh) -> int | None:
    """How many steps one jitted call of `Epoch` trains: 1 for a model with a convolution on
    CPUs (see SLOW_IN_A_LOOP), else None, the whole epoch."""
    def layers(layer: keras.layers.Layer) -> list:
        return [layer, *(sub for inner in getattr(layer, "layers", []) for sub in layers(inner))]

    on_cpu = all(device.platform == "cpu" for device in mesh.devices.flat)
    return 1 if on_cpu and any(isinstance(layer, SLOW_IN_A_LOOP) for layer in layers(model)) else None


class Epoch:
    """One epoch of training as one jitted call on every process (see the module's docstring).

    `run` reads the model's variables and Adam's state (its learning rate included: a callback may
    have changed it) from the Keras model, trains `steps` global batches, and writes them back. The
    forward pass is the model's own (`stateless_call`), so any Keras 3 model trains here. The
    seed is an argument of the jitted function, which this process keeps for the next run of the
    same program (`compiled`).
    """

    def __init__(self, model: keras.Model, mesh: Mesh, split: BatchSplit, rank: int, seed: int, classes: int):
        self.model, self.mesh, self.split, self.rank = model, mesh, split, rank
        # The dropout stream's key, as data: an argument of the jitted function, not a constant in it.
        self.dropout_key = np.asarray(jax.random.key_data(jax.random.fold_in(jax.random.key(seed), DROPOUT)))
        self.rows = max(split.sizes)  # every rank's rows per step, padding included
        self.steps_per_call = steps_per_call(model, mesh)
        key = program_key(model, "epoch", split, rank, classes, [(d.process_index, d.id) for d in mesh.devices.flat])
        self._run = compiled(key, lambda: self._program(model, mesh, split, classes))

    def _program(self, model: keras.Model, mesh: Mesh, split: BatchSplit, classes: int) -> Callable:
        optimizer = model.optimizer
        global_batch, rows = split.global_batch, self.rows
        # Where Adam's step counter is among its variables (the state `stateless_apply` takes).
        counter = next(i for i, v in enumerate(optimizer.variables) if v is optimizer.iterations)
        # Float non-trainable variables (a BatchNormalization's moving statistics) follow each rank's
        # rows: their mean over the ranks keeps the replicas identical. Integer ones (a stock
        # Dropout's random state) advance the same on every rank.
        averaged = [jnp.issubdtype(v.dtype, jnp.floating) for v in model.non_trainable_variables]

        def one_rank(weights: list, fixed: list, state: list, x: jax.Array, y: jax.Array, w: jax.Array,
                     first: jax.Array, key_data: jax.Array):
            dropout_key = jax.random.wrap_key_data(key_data)

            def step(carry: tuple, batch: tuple):
                weights, fixed, state = carry
                xb, yb, wb = batch
                masks = StepMasks(jax.random.fold_in(dropout_key, state[counter]), global_batch, rows, first[0])

                def loss_of(weights: list):
                    with drawing(masks):
                        probs, fixed_after = model.stateless_call(weights, fixed, scale_features(xb), training=True)
                    losses = example_losses(probs, yb, classes) * wb
                    return jnp.sum(losses) / global_batch, (losses, probs, fixed_after)

                (_, (losses, probs, fixed)), grads = jax.value_and_grad(loss_of, has_aux=True)(weights)
                grads = jax.lax.psum(grads, AXIS)  # the mean over the global batch
                fixed = [jax.lax.pmean(v, AXIS) if mean else v for v, mean in zip(fixed, averaged)]
                correct = jnp.sum((jnp.argmax(probs, axis=-1) == yb) * wb)
                sums = jax.lax.psum(jnp.stack([jnp.sum(losses), correct]), AXIS)
                weights, state = optimizer.stateless_apply(state, grads, weights)
                return (weights, fixed, state), sums

            if x.shape[0] == 1:  # one step a call (`steps_per_call`): no loop around it
                (weights, fixed, state), sums = step((weights, fixed, state), (x[0], y[0], w[0]))
                return weights, fixed, state, sums[None]
            (weights, fixed, state), sums = jax.lax.scan(step, (weights, fixed, state), (x, y, w))
            return weights, fixed, state, sums

        replicated, by_rank = P(), P(None, AXIS)
        # check_vma off: with it, JAX's autodiff would itself sum the gradient of the replicated
        # weights over the ranks (the transpose of their broadcast), and the explicit psum above
        # would count it N times. Off, each rank's gradient is its own until that psum.
        return jax.jit(jax.shard_map(
            one_rank, mesh=mesh,
            in_specs=(replicated, replicated, replicated, by_rank, by_rank, by_rank, P(AXIS), replicated),
            out_specs=(replicated, replicated, replicated, replicated), check_vma=False))

    def _global(self, local: np.ndarray, spec: P) -> jax.Array:
        return jax.make_array_from_process_local_data(NamedSharding(self.mesh, spec), np.asarray(local))

    def run(self, x: np.ndarray, y: np.ndarray, batches: np.ndarray) -> dict[str, float]:
        """Train on `batches` (steps x global batch indices into x, y); the epoch's global training
        loss and accuracy."""
        idx, weight = rank_rows(batches, self.split, self.rank)
        first = self._global(np.array([self.split.offsets[self.rank]], np.int32), P(AXIS))
        key = self._global(self.dropout_key, P())
        model, optimizer = self.model, self.model.optimizer
        groups = (model.trainable_variables, model.non_trainable_variables, optimizer.variables)
        values = [[self._global(np.asarray(v.value), P()) for v in group] for group in groups]
        calls = []  # each call's [loss sum, correct] per step
        per_call = self.steps_per_call or len(idx)
        for start in range(0, len(idx), per_call):
            part = slice(start, start + per_call)
            *values, sums = self._run(*values, self._global(x[idx[part]], P(None, AXIS)),
                                      self._global(y[idx[part]].astype(np.int32), P(None, AXIS)),
                                      self._global(weight[part], P(None, AXIS)), first, key)
            calls.append(sums)
        for group, new in zip(groups, values):
            for variable, value in zip(group, new):
                variable.assign(value.addressable_data(0))
        sums = np.concatenate([np.asarray(c.addressable_data(0), np.float64) for c in calls])
        loss_sum, correct = sums.sum(axis=0)
        count = len(batches) * self.split.global_batch
        return {"loss": float(loss_sum / count), "accuracy": float(correct / count)}


class ShardEvaluator:
    """Loss and accuracy *sums* of the model over one rank's shard of a split (no exchange).

    Each example's loss and hit come from a jitted function on this process's device; they are
    summed here in float64, so the sums of the ranks add up to the whole split's.
    """

    def __init__(self, model: keras.Model, x: np.ndarray, y: np.ndarray, classes: int, batch: int = 4096):
        self.model, self.x, self.y, self.batch = model, x, y, batch

        def per_example(weights: list, fixed: list, x: jax.Array, y: jax.Array):
            probs, _ = model.stateless_call(weights, fixed, scale_features(x), training=False)
            return example_losses(probs, y, classes), jnp.argmax(probs, axis=-1) == y

        self._examples = compiled(program_key(model, "examples", classes), lambda: jax.jit(per_example))

    def sums(self) -> np.ndarray:
        """[loss sum, correct count, example count] over this shard."""
        weights = [v.value for v in self.model.trainable_variables]
        fixed = [v.value for v in self.model.non_trainable_variables]
        total = np.zeros(3)
        for start in range(0, len(self.x), self.batch):
            losses, hits = self._examples(weights, fixed, self.x[start:start + self.batch],
                                          self.y[start:start + self.batch].astype(np.int32))
            total += (np.asarray(losses, np.float64).sum(), np.asarray(hits).sum(), 0.0)
        total[2] = len(self.x)
        return total
