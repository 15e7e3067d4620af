"""What the tests share: no test module imports another.

- `project`: the project's root, the CLI and the programs run in processes of their own.
- `limits`: the wall-clock bounds the tests hold runs to, each with its reason.
- `engines`: `ENGINES`, each engine as a test parameter (keras_jax skipped without its extra).
- `runs`: specs of small runs on the bundled sample, and readers of a finished run (checkpoints,
  decisions, exact metrics of its weights, TensorBoard events).
- `stock`: stock tf_keras ReduceLROnPlateau and EarlyStopping replayed on a run's metrics (and the
  same on Keras 3, in a process of its own: `keras3`).
- `deciders`: plateau's decision stack driven through scripted epochs, ranks simulated in one process.
- `jobs`: what a user sees of a job through `plateau status | logs | jobs`.
- `cluster`: real Ray clusters on this machine (a head, worker nodes), torn down by pid.
- `fixtures`: the pytest fixtures built on these (registered by tests/conftest.py).
- `programs/`: the code that runs in a fresh process (a TensorFlow rank, a Keras 3 replay, ...).

TensorFlow, Keras 3 and Ray are imported inside the functions that need them, so a test of pure
logic imports none of them.
"""
