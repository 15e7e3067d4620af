"""Ray for a run: join a cluster or start an embedded Ray, and what every run's workers need.

`ray_session(address, cpus, verbose)` is the one way train and compare get Ray: with an
address it joins that cluster; without one it starts an embedded Ray sized for the run and
shuts it down at the end; inside a running Ray (a Tune trial, a job's driver) it uses that one
and leaves it running. Settings Ray reads from the environment are set for the session only and
restored afterwards.

Example::

    check_gcs_address("10.0.0.5:6379")            # AddressError (one line) if nothing answers
    with ray_session("auto", cpus=3, verbose=False):
        trainer.fit()
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from typing import Iterator, Optional

from service.errors import BadInput, first_line

# Every training worker's environment. tf_keras is what we import, but Ray's TF helpers and any
# `tf.keras` reference must resolve to Keras 2 as well; Keras 3 cannot run MWMS.
WORKER_ENV = {"TF_USE_LEGACY_KERAS": "1"}
QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONWARNINGS": "ignore", "RAY_DEDUP_LOGS": "1"}

# Ray Train's controller collects reports when it polls its workers (every 2 s by default), and a
# worker's next report waits until the previous one was collected: with 1-second epochs, half of
# every epoch-to-epoch cycle went waiting. The driver's value is handed to the controller.
REPORT_POLL_VAR, REPORT_POLL_S = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2"
# Tune's newer console output prints its experiment box whatever the verbosity.
TUNE_OUTPUT_VAR = "RAY_AIR_NEW_OUTPUT"


class AddressError(BadInput):
    """The Ray address cannot be used: one line saying why and what to pass instead."""


def check_gcs_address(address: str) -> None:
    """Fail fast, before anything starts, on a cluster address Ray would retry for a long time.

    This is the address `ray.init` joins (HOST:6379, or 'auto'); the job server's
    http://HOST:8265 is checked by `jobs`.
    """
    if address == "auto":
        return
    if "://" in address and not address.startswith("ray://"):
        raise AddressError(f"--address {address}: give the cluster's GCS address HOST:6379 (or 'auto'); "
                           f"http://HOST:8265 is the job server, used by 'plateau submit'")
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise AddressError(f"--address {address}: expected HOST:PORT (e.g. 10.0.0.5:6379) or 'auto'")
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
    except OSError as exc:
        raise AddressError(f"--address {address}: nothing answers there ({exc.strerror or exc}); "
                           f"start the cluster with 'ray start --head' or check the address") from None


def worker_runtime_env(verbose: bool) -> dict:
    """The runtime environment of every training worker (RunConfig.worker_runtime_env)."""
    return {"env_vars": dict(WORKER_ENV, **({} if verbose else QUIET_ENV))}


@contextlib.contextmanager
def environment(**values: Optional[str]) -> Iterator[None]:
    """Set Ray's environment settings for the block, unless the user set them; restore after."""
    saved = {name: os.environ.get(name) for name in values}
    for name, value in values.items():
        if value is not None and saved[name] is None:
            os.environ[name] = value
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def ray_session(address: Optional[str], cpus: float, verbose: bool) -> Iterator[bool]:
    """Ray for one run; yields True when this session started (and will stop) it.

    Logical CPUs may exceed physical cores: two workers on a two-core laptop share them.
    """
    import ray

    with environment(**{REPORT_POLL_VAR: REPORT_POLL_S}):
        started = _join_or_start(ray, address, cpus, verbose)
        try:
            yield started
        finally:
            if started:
                ray.shutdown()


def _join_or_start(ray, address: Optional[str], cpus: float, verbose: bool) -> bool:
    if ray.is_initialized():
        return False
    quiet = dict(log_to_driver=verbose, logging_level=logging.INFO if verbose else logging.ERROR)
    if address:
        try:
            ray.init(address=address, **quiet)
        except (ConnectionError, RuntimeError) as exc:
            raise AddressError(f"--address {address}: cannot join that Ray cluster ({first_line(exc)})") from None
        return True
    ray.init(num_cpus=max(int(cpus + 0.999), os.cpu_count() or 1), include_dashboard=False, **quiet)
    return True


def tune_console(verbose: bool):
    """Tune's own console tables only with --verbose: the legacy output engine stays silent at
    verbose=0, the new one does not."""
    return environment(**{TUNE_OUTPUT_VAR: None if verbose else "0"})
