"""The seed's model in Keras 3 on JAX, and the keras_jax engine's jitted maths.

The model is a stock Keras 3 Sequential (784 -> Dense 784 relu -> Dropout 0.5 -> Dense 10 softmax,
Adam 0.01): its variables hold the weights and Adam's state between epochs, the stock callbacks
read and change it, and rank 0 saves it as the run's `model.keras`. An epoch runs as one jitted
function over every process (`Epoch`): a `lax.scan` of the steps inside `shard_map` over a mesh
of one CPU device per process, where each process holds its rows of every global batch.

Data parallelism never changes the maths, whatever the number of workers:

* each rank's loss is the sum of its rows' losses over the *global* batch size, and the ranks'
  gradients are summed (`psum`): the mean over the global batch, also for 200 over 3 (67/67/66);
* the dropout mask is drawn for the whole global batch from a (seed, optimizer step) key, and
  each rank takes its rows of it;
* epoch e's order of the training images is a pure function of (seed, e) (`epoch_order`).

Ranks hold the same number of rows per step (the largest share), padded with zero-weight rows, so
that every process runs the same program.

Example::

    model = build_model(spec.model, seed=7)
    epoch = Epoch(model, mesh, split=BatchSplit.of(200, 3), rank=1, seed=7, dropout=0.5)
    logs = epoch.run(x_train, y_train, epoch_order(7, 0, len(x_train), steps, 200))  # {"loss": ..., "accuracy": ...}
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import keras
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from service.data import BatchSplit
from service.engines.contract import DATA_ORDER, DROPOUT
from service.spec import ModelSpec

AXIS = "ranks"  # the mesh's one axis: a device per process, in rank order


def build_model(spec: ModelSpec, seed: int = 7) -> keras.Model:
    """The seed's MLP from stock Keras 3 layers, compiled, with Adam's state built.

    Weights start from `seed` on every rank: the initialisers are seeded, so every process
    builds the same values without any exchange. TensorFlow is never imported.
    """
    # No keras.utils.set_random_seed: the weights' initialisers are seeded here, the dropout masks
    # come from the engine's own keys, and that helper would import TensorFlow (it seeds it too).
    # 'normal' in the seed = RandomNormal(stddev=0.05); pinned seeds, as the tf_keras engine's.
    init = lambda k: keras.initializers.RandomNormal(mean=0.0, stddev=0.05, seed=seed + k)  # noqa: E731
    model = keras.Sequential([
        keras.Input(shape=(784,)),
        keras.layers.Dense(spec.hidden_units, activation="relu", kernel_initializer=init(0)),
        keras.layers.Dropout(spec.dropout),
        keras.layers.Dense(10, activation="softmax", kernel_initializer=init(1)),
    ])
    model.compile(loss="categorical_crossentropy", optimizer=keras.optimizers.Adam(learning_rate=spec.learning_rate),
                  metrics=["accuracy"])
    model.optimizer.build(model.trainable_variables)
    return model


def scale_pixels(x: jax.Array) -> jax.Array:
    """uint8 pixels 0..255 -> float32 in [0, 1], as the tf_keras engine scales them."""
    return x.astype(jnp.float32) / 255.0


def forward(weights: list, x: jax.Array, keep: jax.Array | None = None, rate: float = 0.0) -> jax.Array:
    """The Sequential's maths on `weights` ([kernel, bias, kernel, bias]), with Keras's own ops:
    Dense(relu), dropout by the mask `keep` (None: inference), Dense(softmax)."""
    kernel1, bias1, kernel2, bias2 = weights
    hidden = keras.activations.relu(keras.ops.matmul(x, kernel1) + bias1)
    if keep is not None:
        hidden = jnp.where(keep, hidden / (1.0 - rate), 0.0)
    return keras.activations.softmax(keras.ops.matmul(hidden, kernel2) + bias2)


def example_losses(probs: jax.Array, labels: jax.Array) -> jax.Array:
    """Keras's categorical cross-entropy of each example (the loss the model is compiled with)."""
    return keras.losses.categorical_crossentropy(jax.nn.one_hot(labels, 10), probs)


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


class Epoch:
    """One epoch of training as one jitted call on every process (see the module's docstring).

    `run` reads the weights and Adam's state (its learning rate included: a callback may have
    changed it) from the Keras model, trains `steps` global batches, and writes them back.
    """

    def __init__(self, model: keras.Model, mesh: Mesh, split: BatchSplit, rank: int, seed: int, dropout: float):
        self.model, self.mesh, self.split, self.rank = model, mesh, split, rank
        self.rows = max(split.sizes)  # every rank's rows per step, padding included
        optimizer = model.optimizer
        global_batch, rows, hidden = split.global_batch, self.rows, int(model.layers[0].units)
        dropout_key = jax.random.fold_in(jax.random.key(seed), DROPOUT)
        # Where Adam's step counter is among its variables (the state `stateless_apply` takes).
        counter = next(i for i, v in enumerate(optimizer.variables) if v is optimizer.iterations)

        def one_rank(weights: list, state: list, x: jax.Array, y: jax.Array, w: jax.Array, first: jax.Array):
            def step(carry: tuple, batch: tuple):
                weights, state = carry
                xb, yb, wb = batch
                # The whole global batch's mask from (seed, step); this rank's rows of it. The zero
                # rows below it keep the slice in bounds for a padded rank (its padding has weight 0).
                uniform = jax.random.uniform(jax.random.fold_in(dropout_key, state[counter]), (global_batch, hidden))
                uniform = jnp.concatenate([uniform, jnp.zeros((rows, hidden), uniform.dtype)])
                keep = jax.lax.dynamic_slice(uniform, (first[0], 0), (rows, hidden)) >= dropout

                def loss_of(weights: list):
                    probs = forward(weights, scale_pixels(xb), keep, dropout)
                    losses = example_losses(probs, yb) * wb
                    return jnp.sum(losses) / global_batch, (losses, probs)

                (_, (losses, probs)), grads = jax.value_and_grad(loss_of, has_aux=True)(weights)
                grads = jax.lax.psum(grads, AXIS)  # the mean over the global batch
                correct = jnp.sum((jnp.argmax(probs, axis=-1) == yb) * wb)
                sums = jax.lax.psum(jnp.stack([jnp.sum(losses), correct]), AXIS)
                weights, state = optimizer.stateless_apply(state, grads, weights)
                return (weights, state), sums

            (weights, state), sums = jax.lax.scan(step, (weights, state), (x, y, w))
            return weights, state, sums

        replicated, by_rank = P(), P(None, AXIS)
        # check_vma off: with it, JAX's autodiff would itself sum the gradient of the replicated
        # weights over the ranks (the transpose of their broadcast), and the explicit psum above
        # would count it N times. Off, each rank's gradient is its own until that psum.
        self._run = jax.jit(jax.shard_map(
            one_rank, mesh=mesh, in_specs=(replicated, replicated, by_rank, by_rank, by_rank, P(AXIS)),
            out_specs=(replicated, replicated, replicated), check_vma=False))

    def _global(self, local: np.ndarray, spec: P) -> jax.Array:
        return jax.make_array_from_process_local_data(NamedSharding(self.mesh, spec), np.asarray(local))

    def run(self, x: np.ndarray, y: np.ndarray, batches: np.ndarray) -> dict[str, float]:
        """Train on `batches` (steps x global batch indices into x, y); the epoch's global training
        loss and accuracy."""
        idx, weight = rank_rows(batches, self.split, self.rank)
        first = self.split.offsets[self.rank]
        model, optimizer = self.model, self.model.optimizer
        weights = [self._global(np.asarray(v.value), P()) for v in model.trainable_variables]
        state = [self._global(np.asarray(v.value), P()) for v in optimizer.variables]
        weights, state, sums = self._run(weights, state, self._global(x[idx], P(None, AXIS)),
                                         self._global(y[idx].astype(np.int32), P(None, AXIS)),
                                         self._global(weight, P(None, AXIS)),
                                         self._global(np.array([first], np.int32), P(AXIS)))
        for variable, value in zip(model.trainable_variables, weights):
            variable.assign(value.addressable_data(0))
        for variable, value in zip(optimizer.variables, state):
            variable.assign(value.addressable_data(0))
        loss_sum, correct = np.asarray(sums.addressable_data(0), np.float64).sum(axis=0)
        count = len(batches) * self.split.global_batch
        return {"loss": float(loss_sum / count), "accuracy": float(correct / count)}


class ShardEvaluator:
    """Loss and accuracy *sums* of the model over one rank's shard of a split (no exchange).

    Each example's loss and hit come from a jitted function on this process's device; they are
    summed here in float64, so the sums of the ranks add up to the whole split's.
    """

    def __init__(self, model: keras.Model, x: np.ndarray, y: np.ndarray, batch: int = 4096):
        self.model, self.x, self.y, self.batch = model, x, y, batch
        self._examples = jax.jit(self._per_example)

    @staticmethod
    def _per_example(weights: list, x: jax.Array, y: jax.Array):
        probs = forward(weights, scale_pixels(x))
        return example_losses(probs, y), jnp.argmax(probs, axis=-1) == y

    def sums(self) -> np.ndarray:
        """[loss sum, correct count, example count] over this shard."""
        weights = [v.value for v in self.model.trainable_variables]
        total = np.zeros(3)
        for start in range(0, len(self.x), self.batch):
            losses, hits = self._examples(weights, self.x[start:start + self.batch],
                                          self.y[start:start + self.batch].astype(np.int32))
            total += (np.asarray(losses, np.float64).sum(), np.asarray(hits).sum(), 0.0)
        total[2] = len(self.x)
        return total
