"""One step of the keras_jax engine's jitted epoch with the global batch of 200 split over N ranks
(N CPU devices in one process), against the same step on one rank.

    python -m tests.support.programs.split_epoch N
    -> @@{"gradient": rel. diff, "loss": rel. diff, "correct": [one rank, N ranks]}
"""

from __future__ import annotations

import os
import sys


def main(workers: int) -> None:
    # Both before JAX and Keras 3 are first imported.
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={workers}"
    os.environ["KERAS_BACKEND"] = "jax"
    import jax
    import numpy as np
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    from service import data as data_lib
    from service.engines.keras_jax import model as jm
    from service.spec import ModelSpec
    from tests.support.project import say_json

    splits = data_lib.load("sample", "test", warn=lambda m: None)
    x, y = splits.x_train[:1000], splits.y_train[:1000]
    batches = jm.epoch_order(7, 0, len(x), 5, 200)[:1]  # one step: Adam's first update is lr x sign(gradient)

    def train(ranks: int) -> tuple:
        model = jm.build_model(ModelSpec(), seed=7)
        mesh = Mesh(np.array(jax.devices()[:ranks]), (jm.AXIS,))
        split = data_lib.BatchSplit.of(200, ranks)
        epoch = jm.Epoch(model, mesh, split, 0, seed=7, classes=10)
        # Every rank's rows, as each process would hand over its own (one process holds them all here).
        parts = [jm.rank_rows(batches, split, r) for r in range(ranks)]
        idx = np.concatenate([p[0] for p in parts], axis=1)
        weight = np.concatenate([p[1] for p in parts], axis=1)
        first = np.array(split.offsets, np.int32)

        def put(a: object, spec: object) -> object:
            return jax.device_put(a, NamedSharding(mesh, spec))

        variables = [put(np.asarray(v.value), P()) for v in model.trainable_variables]
        fixed = [put(np.asarray(v.value), P()) for v in model.non_trainable_variables]
        state = [put(np.asarray(v.value), P()) for v in model.optimizer.variables]
        weights, fixed, state, sums = epoch._run(variables, fixed, state, put(x[idx], P(None, jm.AXIS)),
                                          put(y[idx].astype(np.int32), P(None, jm.AXIS)), put(weight, P(None, jm.AXIS)),
                                          put(first, P(jm.AXIS)), put(epoch.dropout_key, P()))
        # Adam's first moment after one step is 0.1 x the gradient.
        moments = [i for i, v in enumerate(model.optimizer.variables)
                   if any(v is m for m in model.optimizer._momentums)]
        return [np.asarray(state[i]) for i in moments], np.asarray(sums, np.float64).sum(axis=0)

    one, one_sums = train(1)
    many, many_sums = train(workers)
    say_json({
        "gradient": max(float(np.max(np.abs(p - q)) / np.max(np.abs(q))) for p, q in zip(many, one)),
        "loss": abs(float(many_sums[0] - one_sums[0])) / float(one_sums[0]),
        "correct": [float(one_sums[1]), float(many_sums[1])],
    })


if __name__ == "__main__":
    main(int(sys.argv[1]))
