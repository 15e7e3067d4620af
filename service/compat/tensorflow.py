"""TensorFlow's and tf_keras's private parts that the tf_keras engine touches, and why. Imported
only in that engine's workers (and by tests/test_compat.py); TensorFlow itself is imported only
where a function needs it.

* `tensorflow.python.data.ops.multi_device_iterator_ops._create_device_dataset` (replaced for the
  whole process, once): the per-device pipelines MultiWorkerMirroredStrategy builds on a dataset
  take no options, and with tf.data autotuning on, the iterators `fit` drops on return wait for
  the autotuner's thread (2-56 s after the last epoch); `device_datasets_with_options` gives them
  the engine's options (`worker.NO_AUTOTUNING`).
* `tf_keras.src.utils.tf_utils.sync_to_numpy_or_python_type`: tf_keras's own conversion of an
  epoch's metric tensors to Python numbers, which `model.SeedModel` uses where it reads the
  metrics' totals once an epoch (`sync_to_numpy_or_python_type`).
* `tf_keras.Model._validate_and_get_metrics_result` (overridden) and `_validate_target_and_loss`
  (called, `validate_target_and_loss`): `model.SeedModel`'s train step returns no metrics (reading
  them would cost collectives every step), and fit asks the first at every epoch's end for the
  epoch's logs (`MODEL_HOOKS`; tests/test_compat.py allows an engine's model class to define only
  these private names).

Example::

    device_datasets_with_options(options)   # every later per-device pipeline gets `options`
"""

from __future__ import annotations

from typing import Any

# tf_keras.Model's private methods the tf_keras engine's model overrides or calls.
MODEL_HOOKS = ("_validate_and_get_metrics_result", "_validate_target_and_loss")
_MARK = "without_autotuning"  # set on the replacement, so that it is installed once per process


def device_datasets_with_options(options: Any) -> None:
    """Make MultiWorkerMirroredStrategy's per-device pipelines (tensorflow's
    multi_device_iterator_ops, which takes no options for them) run with `options`; once per process."""
    from tensorflow.python.data.ops import multi_device_iterator_ops as devices

    build = devices._create_device_dataset
    if getattr(build, _MARK, False):
        return

    def with_options(*args: object, **kwargs: object) -> Any:
        return build(*args, **kwargs).with_options(options)

    setattr(with_options, _MARK, True)
    devices._create_device_dataset = with_options


def sync_to_numpy_or_python_type(tensors: Any) -> Any:
    """tf_keras's conversion of (nested) tensors to numpy values or Python numbers."""
    from tf_keras.src.utils import tf_utils

    return tf_utils.sync_to_numpy_or_python_type(tensors)


def validate_target_and_loss(model: Any, y: Any, loss: Any) -> None:
    """tf_keras's own check in a train step that there are targets and a loss (its one-line
    errors), as stock `train_step` makes it."""
    model._validate_target_and_loss(y, loss)
