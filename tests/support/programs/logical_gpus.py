"""The CLI on a Ray that declares two logical GPUs: Ray places GPU workers, but this machine's
TensorFlow and JAX (CPU-only builds, the default install) see no GPU in them.

    python -m tests.support.programs.logical_gpus train SPEC --gpu ...   (exits with the CLI's code)
"""

from __future__ import annotations

import logging
import sys

if __name__ == "__main__":
    import ray

    ray.init(num_cpus=4, num_gpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    from service.cli import main

    sys.exit(main(sys.argv[1:]))
