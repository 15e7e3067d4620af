"""The tf_keras engine: tf_keras 2.21 under MultiWorkerMirroredStrategy, one process per Ray Train
worker (the default engine).

* `backend.py`: how Ray Train starts the workers (their TF_CONFIG); imports no TensorFlow.
* `worker.py`: `Worker`, this engine's part of the one worker loop (`service/engines/loop.py`): threads,
  devices, MultiWorkerMirroredStrategy, `fit`; and the input pipeline of each rank's rows.
* `model.py`: the seed's model (step-seeded dropout, the loss scaling of an uneven split), the
  keyed random numbers, the shard sums of evaluation (`ShardEvaluator`).
* `state.py`: the checkpoint's named arrays of a tf_keras model and its optimizer, saved and restored.
* `collective.py`: all-gather of small float64 vectors over the strategy's collective ops.
* `callbacks.py`: the shared callbacks (`service/core/callbacks.py`'s list)
  on tf_keras's classes, the stock deciders included, and the decision stack in order.
* `export.py`: the final model as a `.keras` file of stock tf_keras layers.

Selected by `training.engine: tf_keras` (`service/engines/__init__.py`).
"""
