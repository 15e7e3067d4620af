"""One tf_keras training step of the seed model on 200 sample images, with the global batch split
over N replicas (N logical CPUs, MirroredStrategy), against the same step in one process.

    python -m tests.support.programs.one_step N
    -> @@{"gradient": rel. diff, "gradient_unscaled": rel. diff, "weights": max diff, "loss": ...}
"""

from __future__ import annotations

import sys


def main(workers: int) -> None:
    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * workers)
    from service import data as data_lib
    from service.engines.tf_keras.model import BatchSplit, build_model, scale_features
    from service.spec import ModelSpec
    from tests.support.project import say_json

    splits = data_lib.load("sample", "test", warn=lambda m: None)
    x = scale_features(splits.x_train[:200])
    y = tf.one_hot(tf.cast(splits.y_train[:200], tf.int32), 10)

    def first_moments(model: object) -> list:
        # Adam's m after one step is 0.1 x the gradient: its first update is lr x sign(gradient)
        # and would hide a wrong scale.
        return [v.numpy() for v in model.optimizer.variables if "/m/" in "/" + v.name]

    single = build_model(ModelSpec(), seed=7)
    single.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(200), epochs=1, steps_per_epoch=1, verbose=0)

    split = BatchSplit.of(200, workers)
    strategy = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(workers)])

    def rows(_context: object) -> object:
        # MirroredStrategy hands a per-replica dataset's elements to the replicas in turn.
        parts = [tf.data.Dataset.from_tensors((x[o:o + n], y[o:o + n])) for o, n in zip(split.offsets, split.sizes)]
        dataset = parts[0]
        for part in parts[1:]:
            dataset = dataset.concatenate(part)
        return dataset

    def one_step(scaled: bool) -> tuple:
        with strategy.scope():
            model = build_model(ModelSpec(), seed=7, split=split if scaled else None)
        model.layers[1].split = split  # the same dropout rows either way
        history = model.fit(strategy.distribute_datasets_from_function(rows), epochs=1, steps_per_epoch=1, verbose=0)
        return model, history.history["loss"][0]

    def largest_difference(a: list, b: list) -> float:
        return max(float(np.max(np.abs(p - q)) / np.max(np.abs(q))) for p, q in zip(a, b))

    model, loss = one_step(scaled=True)
    unscaled, _ = one_step(scaled=False)
    say_json({
        "gradient": largest_difference(first_moments(model), first_moments(single)),
        "gradient_unscaled": largest_difference(first_moments(unscaled), first_moments(single)),
        "weights": max(float(np.max(np.abs(p - q))) for p, q in zip(model.get_weights(), single.get_weights())),
        "loss": loss,
    })


if __name__ == "__main__":
    main(int(sys.argv[1]))
