"""Wall-clock bounds of the suite, named, each with its reason.

Two kinds, neither a speed target (those live in benchmarks/):
- timeouts (`*_S`) that end a hung command, sized with room for a loaded 2-core machine;
- bounds that a guarantee is about (`*_WITHIN_S`): nothing waited where it must not.
"""

# --- timeouts: a hang must not stall the suite ---------------------------------------------------

# A CLI command that starts no Ray (a check, a refusal, a listing): seconds when it works.
COMMAND_S = 120
# A program in a process of its own that imports TensorFlow or JAX and trains a step or an epoch.
PROGRAM_S = 300
# A whole training run or study through the CLI on the sample (Ray's start, TensorFlow's import
# in every worker, a few epochs): one to two minutes on 2 cores.
RUN_S = 420
# A run that fails, restarts or resumes, or a study across nodes: twice a run's work and more.
LONG_RUN_S = 900

# --- bounds a guarantee is about -----------------------------------------------------------------

# A refusal before anything starts (an unreachable job server given up after --wait-server 3 s, a
# run folder in use): the interpreter's start-up on busy cores, but no retry loop and no Ray.
REFUSED_WITHIN_S = 30
# SIGINT or SIGTERM to a running command: its one line and exit code, with Ray stopped.
SIGNAL_EXIT_WITHIN_S = 15
# A killed node: the GCS declares it dead after 5 health checks 1 s apart (the test clusters'
# setting, tests/support/cluster.py), plus the raylet's own teardown.
NODE_DEAD_WITHIN_S = 30
# An elastic run regrows to 2 workers after the node returns: Ray Train's resize check every
# scaling.resize_interval_s, a new worker group and a restore; far below a full restart's time.
REGROWN_WITHIN_S = 60
# A killed keras_jax worker, from its failure to the new worker group's placement: the survivor
# must not wait out JAX's 90-s heartbeat timeout (a wait would take 90 s and more). The restart
# itself (new processes, TensorFlow's and JAX's imports, the join) takes 15-30 s on 2 cores.
JAX_RESTART_WITHIN_S = 85
