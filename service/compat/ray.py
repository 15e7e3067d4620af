"""Ray's private parts that plateau touches, and why. Nothing here starts Ray; the private modules
are imported only where a function needs them.

* `ray._private.worker.print_worker_logs` (replaced for a session) and `filter_autoscaler_events`:
  the one function through which a Ray driver prints its workers' and the cluster's lines;
  `raylog.RayLines` routes them to the run's `ray.log` (`log_printer`, `set_log_printer`,
  `autoscaler_events`).
* `ray._common.network_utils.build_address` and `ray.train._internal.utils.get_address_and_port`:
  how Ray's own TensorFlow and JAX backends pick a worker's reachable address and a free port;
  both engines' `backend.py` do the same without importing a framework.
* `RAY_TRAIN_HEALTH_CHECK_INTERVAL_S` (`REPORT_POLL_VAR`, Ray Train's
  `HEALTH_CHECK_INTERVAL_S_ENV_VAR`): how often Ray Train's controller polls its workers, and so
  collects their reports; `cluster.py` shortens it.
* `checkpoint_manager_snapshot.json` (`SNAPSHOT_FILE`, Ray Train's
  `CHECKPOINT_MANAGER_SNAPSHOT_FILENAME`): Ray Train's record of a run's kept checkpoints and the
  latest one (Ray Train's `_CheckpointManagerState`); `checkpoint.py` reads it and rewrites it
  without a damaged checkpoint, through the fields `SNAPSHOT_FIELDS` (each result with a
  `checkpoint_dir_name` and its `metrics`).
* `ray.train.v2._internal.execution.context.TrainRunContext`: only a type name, for the
  annotation of a Ray Train callback (`compare/trials.py`).
* `JobSubmissionClient._do_request` (overridden, to give every request a timeout) and
  `JobSubmissionClient._headers` (the authentication headers, for a call to the state API):
  `jobs.py`, through `timely_job_client` and `client_headers`.
* The loggers `ray._private.runtime_env.working_dir`, `ray._private.runtime_env.packaging` and
  `ray._private.authentication.http_token_authentication` (`QUIET_LOGGERS`, with Ray's public
  job-client loggers): quietened while a job is submitted.

Example::

    set_log_printer(my_printer)      # Ray's lines go to my_printer(data, print_file, ignore_prefix)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from ray.train.v2._internal.execution.context import TrainRunContext  # noqa: F401 - a type name

REPORT_POLL_VAR = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"
SNAPSHOT_FIELDS = ("checkpoint_results", "checkpoint_report_indices", "latest_checkpoint_result",
                   "pending_training_results", "pending_validation_specs", "validated_checkpoint_dir_names",
                   "timed_out_validation_checkpoint_dir_names", "failed_validation_checkpoint_dir_names")
QUIET_LOGGERS = ("ray.dashboard.modules.job.sdk", "ray.dashboard.modules.dashboard_sdk",
                 "ray._private.runtime_env.working_dir", "ray._private.runtime_env.packaging",
                 "ray._private.authentication.http_token_authentication")


def _ray_worker() -> Any:
    import ray._private.worker as ray_worker

    return ray_worker


def log_printer() -> Callable[..., None]:
    """Ray's `print_worker_logs(data, print_file, ignore_prefix=False)` as it is now."""
    return _ray_worker().print_worker_logs


def set_log_printer(printer: Callable[..., None]) -> None:
    """Make `printer` what Ray's driver calls with every batch of its workers' lines."""
    _ray_worker().print_worker_logs = printer


def autoscaler_events() -> Callable[[list[str]], Any]:
    """Ray's filter of the autoscaler's lines: only its events, as Ray prints them."""
    return _ray_worker().filter_autoscaler_events


def build_address(host: str, port: int | str) -> str:
    """host:port as Ray writes it (brackets around an IPv6 host)."""
    from ray._common.network_utils import build_address as build

    return build(host, port)


def get_address_and_port() -> tuple[str, int]:
    """This node's address and a free port on it (run in a worker)."""
    from ray.train._internal.utils import get_address_and_port as get

    return get()


def timely_job_client(timeout_of: Callable[[str], tuple[float, float]]) -> type:
    """Ray's `JobSubmissionClient` whose every request gets `timeout_of(method)` ((connect, read)
    seconds) unless the call names one: an unreachable address fails in seconds instead of hanging."""
    from ray.job_submission import JobSubmissionClient

    class TimelyClient(JobSubmissionClient):
        def _do_request(self, method, endpoint, **kwargs):  # noqa: ANN001 - Ray's signature
            kwargs.setdefault("timeout", timeout_of(method))
            return super()._do_request(method, endpoint, **kwargs)

    return TimelyClient


def client_headers(client: Any) -> dict:
    """The headers a `JobSubmissionClient` sends (its authentication among them), for a call of
    our own to the same server."""
    return client._headers or {}
