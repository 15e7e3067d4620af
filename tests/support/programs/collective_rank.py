"""One rank of a two-process MultiWorkerMirroredStrategy epoch on 2,000 sample images (TF_CONFIG
names the rank's peers), counting the collective ops inside a training step's loop body.

    TF_CONFIG=... python -m tests.support.programs.collective_rank RANK
    -> @@{"rank": RANK, "per_step": [collectives per step, ...], "loss": ...}
"""

from __future__ import annotations

import sys

WORLD = 2


def main(rank: int) -> None:
    import tensorflow as tf

    # One thread each: two ranks share two cores.
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from service import data as data_lib
    from service.engines.tf_keras.model import BatchSplit, build_model
    from service.spec import ModelSpec
    from service.engines.tf_keras.worker import make_strategy, per_replica, train_dataset
    from tests.support.project import say_json

    splits = data_lib.load("sample", "holdout")
    x, y = splits.x_train[:2000], splits.y_train[:2000]
    split = BatchSplit.of(200, WORLD)
    strategy = make_strategy(WORLD)
    with strategy.scope():
        model = build_model(ModelSpec(), seed=7, split=split, steps_per_execution=5)
    rows = slice(split.offsets[rank], split.offsets[rank] + split.sizes[rank])
    dataset = train_dataset(x, y, steps=10, rows=rows, global_batch=200, seed=7, start_epoch=0, epochs=1)
    model.fit(per_replica(strategy, dataset, WORLD), epochs=1, steps_per_epoch=10, verbose=0)
    counts = []
    for function in model.train_function._list_all_concrete_functions():
        library = function.graph.as_graph_def().library.function
        for body in library:
            if body.signature.name.startswith("while_body"):
                counts.append(sum(1 for node in body.node_def if node.op.startswith("Collective")))
    say_json({"rank": rank, "per_step": counts, "loss": float(model.get_metrics_result()["loss"])})


if __name__ == "__main__":
    main(int(sys.argv[1]))
