"""Programs that run in a fresh Python process, each `python -m tests.support.programs.NAME ARGS`
(tests run them through `tests.support.project.program`). Each ends with `@@` and its result as
JSON on stdout, except the CLI wrappers, which exit with the CLI's code.

- `score_model`: load a run's model.keras with the engine's Keras and score the test images.
- `keras3_replay`: stock Keras 3 callbacks fed a metric sequence.
- `keras3_stack`: plateau's stack on Keras 3's classes against stock Keras 3, every parameter set.
- `collective_rank`: one tf_keras rank of a two-process MultiWorkerMirroredStrategy epoch, counting
  the collectives in a training step.
- `one_step`: one tf_keras step at N replicas against the single-process step.
- `split_epoch`: one keras_jax epoch at N ranks against the single-rank epoch.
- `without_jax`: the CLI on a machine where JAX cannot be imported.
- `logical_gpus`: the CLI on a Ray that declares GPUs this machine does not have.
"""
