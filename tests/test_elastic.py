"""The maths of data parallelism does not depend on the number of workers: every rank takes its
rows of the same global batch, with its rows of the same dropout mask, and its loss is scaled so
that one step at any world size is the single-process step on the whole batch.

These tests need no Ray: replicas are TensorFlow's own (MirroredStrategy over logical CPUs, in
a subprocess, because logical devices must be set before TensorFlow starts).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from service.model import BatchSplit
from tests.ray_head import PROJECT_ROOT


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

    from service.worker import train_dataset

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


ONE_STEP = r"""
import json, sys
import numpy as np
import tensorflow as tf

workers = int(sys.argv[1])
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * workers)
from service import data as data_lib
from service.model import BatchSplit, build_model, scale_pixels
from service.spec import ModelSpec

splits = data_lib.load("sample", "test", warn=lambda m: None)
x = scale_pixels(splits.x_train[:200])
y = tf.one_hot(tf.cast(splits.y_train[:200], tf.int32), 10)

def first_moments(model):
    # Adam's m after one step is 0.1 x the gradient: its first update is lr x sign(gradient)
    # and would hide a wrong scale.
    return [v.numpy() for v in model.optimizer.variables if "/m/" in "/" + v.name]

single = build_model(ModelSpec(), seed=7)
single.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(200), epochs=1, steps_per_epoch=1, verbose=0)

split = BatchSplit.of(200, workers)
strategy = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(workers)])

def rows(_context):
    # MirroredStrategy hands a per-replica dataset's elements to the replicas in turn.
    parts = [tf.data.Dataset.from_tensors((x[o:o + n], y[o:o + n])) for o, n in zip(split.offsets, split.sizes)]
    dataset = parts[0]
    for part in parts[1:]:
        dataset = dataset.concatenate(part)
    return dataset

def one_step(scaled):
    with strategy.scope():
        model = build_model(ModelSpec(), seed=7, split=split if scaled else None)
    model.layers[1].split = split  # the same dropout rows either way
    history = model.fit(strategy.distribute_datasets_from_function(rows), epochs=1, steps_per_epoch=1, verbose=0)
    return model, history.history["loss"][0]

def largest_difference(a, b):
    return max(float(np.max(np.abs(p - q)) / np.max(np.abs(q))) for p, q in zip(a, b))

model, loss = one_step(scaled=True)
unscaled, _ = one_step(scaled=False)
print("@@" + json.dumps({
    "gradient": largest_difference(first_moments(model), first_moments(single)),
    "gradient_unscaled": largest_difference(first_moments(unscaled), first_moments(single)),
    "weights": max(float(np.max(np.abs(p - q))) for p, q in zip(model.get_weights(), single.get_weights())),
    "loss": loss,
}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("workers", [2, 3])
def test_one_step_at_n_workers_is_the_single_process_step_on_the_same_200_images(workers):
    proc = subprocess.run([sys.executable, "-c", ONE_STEP, str(workers)], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert "@@" in proc.stdout, proc.stderr[-3000:]
    result = json.loads(proc.stdout.rsplit("@@", 1)[1])
    print(f"\n{workers} workers: {result}")
    # The gradient (Adam's first moment) equals the single-process one up to float rounding...
    assert result["gradient"] < 1e-5
    assert result["weights"] < 1e-5
    if workers == 3:
        # ... and without the per-replica scale, 67/67/66 rows would not give the global mean.
        assert result["gradient_unscaled"] > 1e-3
