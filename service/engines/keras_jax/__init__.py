"""The keras_jax engine: Keras 3 on JAX, one process per Ray Train worker.

* `backend.py`: how Ray Train starts the workers (the JAX coordinator's address); imports no JAX.
* `worker.py`: `Worker`, this engine's part of the one worker loop (`service/engines/loop.py`); the
  only module that joins the processes.
* `model.py`: the seed's model in Keras 3, the jitted epoch (gradients summed over the processes),
  the shard sums of evaluation (`ShardEvaluator`).
* `state.py`: the checkpoint's named arrays of a Keras 3 model and its optimizer, saved and restored.
* `collective.py`: all-gather of small float64 vectors between the processes.
* `callbacks.py`: the shared callbacks (`service/core/callbacks.py`'s list)
  on Keras 3's Callback.
* `export.py`: the final model as a Keras 3 `.keras` file.

Selected by `training.engine: keras_jax` (`service/engines/__init__.py`); installed with the `jax` extra.
"""
