"""The maths of data parallelism does not depend on the number of workers: every rank takes its
rows of the same global batch, with its rows of the same dropout mask, and its loss is scaled so
that one step at any world size is the single-process step on the whole batch.

These tests need no Ray: replicas are TensorFlow's own (MirroredStrategy over logical CPUs, in
a subprocess, because logical devices must be set before TensorFlow starts).
"""

from __future__ import annotations


import numpy as np
import pytest

from service.engines.tf_keras.model import BatchSplit
from tests.support.project import program_json, python_env


@pytest.mark.parametrize("batch, workers, offsets, sizes", [
    (200, 1, (0,), (200,)),
    (200, 2, (0, 100), (100, 100)),
    (200, 3, (0, 67, 134), (67, 67, 66)),
    (10, 4, (0, 3, 6, 8), (3, 3, 2, 2)),
])
def test_batch_split_is_as_even_as_possible(batch, workers, offsets, sizes):
    split = BatchSplit.of(batch, workers)
    assert (split.offsets, split.sizes) == (offsets, sizes)
    assert split.even == (len(set(sizes)) == 1)
    # Keras divides a replica's loss by its rows x replicas; these factors make that rows / batch.
    for factor, size in zip(split.loss_factors(), sizes):
        assert factor / (size * workers) == pytest.approx(1 / batch)


def test_every_world_size_trains_on_the_same_global_batches():
    import tensorflow as tf

    from service.engines.tf_keras.worker import train_dataset

    x = np.arange(1000, dtype=np.uint8).reshape(1000, 1) % 251
    y = (np.arange(1000) % 10).astype(np.uint8)
    common = dict(steps=4, global_batch=200, seed=7, start_epoch=1, epochs=3)

    def images(rows: slice) -> np.ndarray:
        # The dataset repeats (infinite cardinality: MWMS then needs no per-step "is there a
        # batch" exchange); fit draws epochs x steps batches of it: 2 x 4 here.
        dataset = train_dataset(x, y, rows=rows, **common)
        assert dataset.cardinality().numpy() == tf.data.INFINITE_CARDINALITY
        return np.concatenate([b[0].numpy() for b in dataset.take(2 * 4)])

    whole = images(slice(0, 200))
    assert whole.shape == (2 * 4 * 200, 1)
    for workers in (2, 3):
        split = BatchSplit.of(200, workers)
        parts = [images(slice(o, o + n)).reshape(2 * 4, n, 1) for o, n in zip(split.offsets, split.sizes)]
        np.testing.assert_array_equal(np.concatenate(parts, axis=1).reshape(-1, 1), whole)
    # Each epoch is its own shuffle of the images.
    first, second = whole[:800], whole[800:]
    assert not np.array_equal(first, second)
    assert not np.array_equal(np.sort(first, axis=0), first)




@pytest.mark.slow
@pytest.mark.parametrize("workers", [2, 3])
def test_one_step_at_n_workers_is_the_single_process_step_on_the_same_200_images(workers):
    """tests/support/programs/one_step.py, in a process of its own (logical devices are set before TensorFlow starts)."""
    result = program_json("one_step", str(workers), env=python_env(TF_CPP_MIN_LOG_LEVEL="3"))
    print(f"\n{workers} workers: {result}")
    # The gradient (Adam's first moment) equals the single-process one up to float rounding...
    assert result["gradient"] < 1e-5
    assert result["weights"] < 1e-5
    if workers == 3:
        # ... and without the per-replica scale, 67/67/66 rows would not give the global mean.
        assert result["gradient_unscaled"] > 1e-3
