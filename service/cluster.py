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
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Callable, Iterator, Optional, Sequence

from service.compat import ray as compat_ray
from service.console import say
from service.envvars import environment
from service.errors import BadInput, first_line
from service.raylog import RayLines

QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONWARNINGS": "ignore", "RAY_DEDUP_LOGS": "1"}

# Ray Train's controller collects reports when it polls its workers (every 2 s by default), and a
# worker's next report waits until the previous one was collected: with 1-second epochs, half of
# every epoch-to-epoch cycle went waiting. The driver's value is handed to the controller.
REPORT_POLL_S = "0.2"  # Ray Train's own setting (service/compat/ray.py: `report_polling`)
# Tune's newer console output prints its experiment box whatever the verbosity.
TUNE_OUTPUT_VAR = "RAY_AIR_NEW_OUTPUT"


class AddressError(BadInput):
    """The Ray address cannot be used: one line saying why and what to pass instead."""


class Address(str):
    """A Ray address that remembers where it came from, so that its errors name what the user
    can change: the `--address` flag, or the RAY_ADDRESS variable (Ray's job docs tell users to
    export it, then `plateau train` would join it without any flag typed)."""

    FLAG, ENV = "--address", "RAY_ADDRESS"

    def __new__(cls, value: str, origin: str = FLAG) -> "Address":
        address = super().__new__(cls, value)
        address.origin = origin
        return address


def _named(address: str) -> str:
    """`--address X` or `RAY_ADDRESS=X (from the environment; unset it to train on an embedded Ray)`."""
    if getattr(address, "origin", Address.FLAG) == Address.ENV:
        return f"RAY_ADDRESS={address} (from the environment; unset it to train on an embedded Ray)"
    return f"--address {address}"


def check_gcs_address(address: str) -> None:
    """Fail fast, before anything starts, on a cluster address Ray would retry for a long time.

    This is the address `ray.init` joins (HOST:6379, or 'auto'); the job server's
    http://HOST:8265 is checked by `jobs`.
    """
    if address == "auto":
        return
    if "://" in address and not address.startswith("ray://"):
        raise AddressError(f"{_named(address)}: give the cluster's GCS address HOST:6379 (or 'auto'); "
                           f"http://HOST:8265 is the job server, used by 'plateau submit'")
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise AddressError(f"{_named(address)}: expected HOST:PORT (e.g. 10.0.0.5:6379) or 'auto'")
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
    except OSError as exc:
        raise AddressError(f"{_named(address)}: nothing answers there ({exc.strerror or exc}); "
                           f"start the cluster with 'ray start --head' or check the address") from None


def local_cluster_file() -> Path:
    """Where `ray start` records the cluster it started on this machine (Ray's own rule: RAY_TMPDIR,
    else TMPDIR on Linux, else /tmp; then ray/ray_current_cluster)."""
    if "RAY_TMPDIR" in os.environ:
        base = os.environ["RAY_TMPDIR"]
    elif sys.platform.startswith("linux") and "TMPDIR" in os.environ:
        base = os.environ["TMPDIR"]
    else:
        base = "/tmp" if sys.platform.startswith(("linux", "darwin")) else tempfile.gettempdir()
    return Path(base) / "ray" / "ray_current_cluster"


def check_no_local_cluster() -> None:
    """An embedded Ray cannot run beside a cluster that `ray start` runs on this machine: without an
    address ray.init joins that cluster, and with its own Ray, Ray Train's helpers still find the
    other one and end the run's workers. So a live one is one line (AddressError), before Ray starts."""
    try:
        address = local_cluster_file().read_text().strip()
    except OSError:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except OSError:
        return   # a file `ray stop` left behind: nothing runs there
    raise AddressError(f"a Ray cluster started with 'ray start' runs on this machine ({address}); train on it "
                       f"with --address auto, or stop it with 'ray stop' to train on an embedded Ray")


def worker_runtime_env(verbose: bool) -> dict:
    """The runtime environment of every training worker (RunConfig.worker_runtime_env), before its
    engine's variables (`Engine.runtime_env`)."""
    return {"env_vars": {} if verbose else dict(QUIET_ENV)}


@contextlib.contextmanager
def ray_session(address: Optional[str], cpus: float, verbose: bool, log: Optional[Path] = None,
                echo: Callable[[str], None] = say, code: Sequence[str] = ()) -> Iterator[bool]:
    """Ray for one run; yields True when this session started (and will stop) it. `code`: local
    files and folders every worker must import (a builder's, `usermodel.shipped_code`), uploaded
    with the session.

    Ray's own lines (its workers' output, the cluster's messages) go to `log` (the run's
    `ray.log`), to stdout only with `verbose`; a lost node is a line through `echo`
    (`raylog.RayLines`). Logical CPUs may exceed physical cores: two workers on a two-core
    laptop share them.
    """
    import ray

    with compat_ray.report_polling(REPORT_POLL_S):
        if ray.is_initialized():   # inside a Tune trial: the study's driver routes Ray's lines
            yield False
            return
        with RayLines(log, verbose, echo):
            _join_or_start(ray, address, cpus, verbose, to_driver=verbose or log is not None, code=code)
            try:
                yield True
            finally:
                ray.shutdown()


def _join_or_start(ray: ModuleType, address: Optional[str], cpus: float, verbose: bool, to_driver: bool,
                   code: Sequence[str] = ()) -> None:
    quiet = dict(log_to_driver=to_driver, logging_level=logging.INFO if verbose else logging.ERROR,
                 runtime_env={"py_modules": list(code)} if code else None)
    if address:
        try:
            ray.init(address=str(address), **quiet)
        except (ConnectionError, RuntimeError) as exc:
            raise AddressError(f"{_named(address)}: cannot join that Ray cluster ({first_line(exc)})") from None
        return
    check_no_local_cluster()
    ray.init(address="local", num_cpus=max(int(cpus + 0.999), os.cpu_count() or 1), include_dashboard=False,
             **quiet)


def tune_console(verbose: bool):
    """Tune's own console tables only with --verbose: the legacy output engine stays silent at
    verbose=0, the new one does not."""
    return environment(**{TUNE_OUTPUT_VAR: None if verbose else "0"})


# ---------------------------------------------------------------------------------------------
# Resources: can this Ray place the run's workers at all?


class ResourcesError(BadInput):
    """A Ray that cannot grow lacks what the workers need (exit 2, before any worker starts)."""


class ResourcesTimeout(RuntimeError):
    """A cluster did not offer the workers' resources within `scaling.resources_timeout_s`."""


def _describe(bundle: dict[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in bundle.items()) + "}"


def placeable(nodes: list[dict[str, float]], bundle: dict[str, float], count: int, strategy: str) -> bool:
    """Whether `count` workers of `bundle` fit on `nodes` (each node's total resources): a worker
    lives on one node; STRICT_SPREAD wants a node per worker."""
    def fits(node: dict[str, float]) -> int:
        return int(min(node.get(k, 0.0) / v for k, v in bundle.items() if v > 0) + 1e-9)

    per_node = [fits(node) for node in nodes]
    if strategy == "STRICT_SPREAD":
        return sum(1 for n in per_node if n >= 1) >= count
    return sum(per_node) >= count


def shortfall(nodes: list[dict[str, float]], bundle: dict[str, float], count: int, strategy: str,
              where: str = "Ray") -> str:
    """What the run needs and what `where` has, in words, e.g. `needs 2 GPUs, Ray has 0`."""
    for key, value in bundle.items():
        have = sum(node.get(key, 0.0) for node in nodes)
        if have < value * count - 1e-9:
            unit = f"{key}s" if key == "GPU" else key
            return f"needs {value * count:g} {unit} ({count} worker(s) x {_describe(bundle)}), {where} has {have:g}"
    if strategy == "STRICT_SPREAD":
        roomy = sum(1 for node in nodes if placeable([node], bundle, 1, "PACK"))
        return f"needs {count} nodes that each fit {_describe(bundle)} (STRICT_SPREAD), {where} has {roomy}"
    return f"needs {count} worker(s) of {_describe(bundle)}, each on one node; {where}'s nodes have no such room"


def alive_nodes() -> list[dict[str, float]]:
    import ray

    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]


def wait_for_resources(bundle: dict[str, float], count: int, strategy: str, *, can_grow: bool,
                       timeout_s: float, echo: Callable[[str], None], interval_s: float = 30.0, poll_s: float = 1.0) -> None:
    """Return once Ray's nodes could hold the workers; otherwise say so.

    A Ray that cannot grow (the embedded one) fails at once with ResourcesError. A cluster may
    still add nodes (autoscaling): a line says what the run waits for, again every `interval_s`
    with the time waited, until `timeout_s` (ResourcesTimeout).
    """
    import time

    started, said = time.monotonic(), None
    while not placeable(alive_nodes(), bundle, count, strategy):
        if not can_grow:
            missing = shortfall(alive_nodes(), bundle, count, strategy, where="this machine's Ray")
            raise ResourcesError(f"the run {missing}; lower scaling.num_workers or the resources per worker, "
                                 "or join a cluster with --address")
        missing = shortfall(alive_nodes(), bundle, count, strategy, where="the cluster")
        waited = time.monotonic() - started
        if waited >= timeout_s:
            raise ResourcesTimeout(f"gave up after {waited:.0f}s waiting for the cluster: the run {missing} "
                                   "(scaling.resources_timeout_s)")
        if said is None or time.monotonic() - said >= interval_s:
            echo(f"waiting for the cluster: the run {missing}; {waited:.0f}s of {timeout_s:g}s")
            said = time.monotonic()
        time.sleep(poll_s)
