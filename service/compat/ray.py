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
  collects their reports; `cluster.py` shortens it for a Ray session (`report_polling`).
* `checkpoint_manager_snapshot.json` (`SNAPSHOT_FILE`, Ray Train's
  `CHECKPOINT_MANAGER_SNAPSHOT_FILENAME`): Ray Train's record of a run's kept checkpoints and the
  latest one (Ray Train's `_CheckpointManagerState`), read (`read_snapshot`, `kept_checkpoints`,
  `latest_checkpoint`) to find the checkpoint a run resumes from (`checkpoints/resume.py`), and
  rewritten without a damaged checkpoint (`drop_from_snapshot`), through the fields
  `SNAPSHOT_FIELDS` (each result with a `checkpoint_dir_name` and its `metrics`).

  Why rewrite it rather than name the checkpoint to resume from through Ray Train's public API:
  on a restart of a run name, Ray Train V2's `CheckpointManager` loads this record
  (`_maybe_load_state_from_storage`), refuses a record naming a folder that is gone
  (`_assert_checkpoints_exist`), and hands every worker its latest checkpoint
  (`before_init_train_context`, what `ray.train.get_checkpoint()` returns). The public way to
  choose another, the trainer's `resume_from_checkpoint=`, raises DeprecationWarning in V2
  (`DataParallelTrainer.__init__`); the replacement Ray's migration guide gives (the checkpoint in
  `train_loop_config`, taken when `get_checkpoint()` is None) only works for a run without a record,
  and dropping the record would make Ray Train forget the kept checkpoints (so `num_to_keep` would
  never delete them) and restart its report count. So the record itself names the checkpoint the
  workers restore, and every later restart within the run takes the run's newer ones as usual.
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

import contextlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Iterator, Optional

from service.envvars import environment
from service.files import write_atomic

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


def report_polling(seconds: str) -> ContextManager[None]:
    """Ray Train's controller polls its workers every `seconds` during the block, unless the user
    set `REPORT_POLL_VAR`; put back after."""
    return environment(**{REPORT_POLL_VAR: seconds})


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


def read_snapshot(checkpoints_dir: Path) -> Optional[dict]:
    """Ray Train's record of the run whose checkpoints are in `checkpoints_dir`; None when there is
    none. OSError when it cannot be read, ValueError when it is not JSON."""
    try:
        text = Path(checkpoints_dir, SNAPSHOT_FILE).read_text()
    except FileNotFoundError:
        return None
    return json.loads(text)


def kept_checkpoints(snapshot: dict) -> list[tuple[str, dict]]:
    """(folder name, reported metrics) of every checkpoint the record keeps; KeyError, TypeError or
    AttributeError when the record lacks them."""
    return [(r["checkpoint_dir_name"], dict(r["metrics"])) for r in snapshot["checkpoint_results"]]


def latest_checkpoint(snapshot: dict) -> Optional[tuple[str, dict]]:
    """(folder name, reported metrics) of the checkpoint Ray Train hands the workers; None if none."""
    found = snapshot.get("latest_checkpoint_result")
    return (found["checkpoint_dir_name"], dict(found.get("metrics") or {})) if found else None


def drop_from_snapshot(checkpoints_dir: Path, names: set[str], latest: str) -> None:
    """Rewrite Ray Train's record of the run in `checkpoints_dir` without the checkpoints `names`,
    with `latest` (a folder name it keeps) as its latest: the one the workers restore."""
    snapshot = read_snapshot(checkpoints_dir)
    kept = [i for i, r in enumerate(snapshot["checkpoint_results"]) if r["checkpoint_dir_name"] not in names]
    pending = [i for i, r in enumerate(snapshot.get("pending_training_results") or [])
               if r["checkpoint_dir_name"] not in names]
    out = dict(snapshot)
    out["checkpoint_results"] = [snapshot["checkpoint_results"][i] for i in kept]
    out["checkpoint_report_indices"] = [snapshot["checkpoint_report_indices"][i] for i in kept]
    out["latest_checkpoint_result"] = next(r for r in out["checkpoint_results"] if r["checkpoint_dir_name"] == latest)
    if "pending_training_results" in snapshot:
        out["pending_training_results"] = [snapshot["pending_training_results"][i] for i in pending]
        out["pending_validation_specs"] = [snapshot["pending_validation_specs"][i] for i in pending]
    for key in ("validated_checkpoint_dir_names", "timed_out_validation_checkpoint_dir_names",
                "failed_validation_checkpoint_dir_names"):
        if key in snapshot:
            out[key] = [n for n in snapshot[key] if n not in names]
    write_atomic(Path(checkpoints_dir, SNAPSHOT_FILE), json.dumps(out))


def shipped_by_ray(path: Path) -> bool:
    """Whether `path` is code Ray unpacked for this process (a submitted job's working_dir or
    py_modules, under the session's `runtime_resources/` folder, Ray's layout, not an API)."""
    return "runtime_resources" in path.parts


@contextlib.contextmanager
def job_py_modules(runtime_env: dict) -> Iterator[dict]:
    """`runtime_env` as Ray's job client can upload it: each `.py` file in `py_modules` becomes a
    temporary folder holding the module as a package of the same name (`nets.py` ->
    `nets/__init__.py`), so workers still `import nets`. Ray's own `ray.init` uploads a lone file;
    its job client (2.60) passes a file to the folder packer, which refuses it ("must be an
    existing directory"). The folders are removed when the block ends (after the upload)."""
    files = [m for m in runtime_env.get("py_modules", []) if isinstance(m, str) and m.endswith(".py")]
    if not files:
        yield runtime_env
        return
    with tempfile.TemporaryDirectory(prefix="plateau-py-modules-") as tmp:
        folders = {}
        for i, file in enumerate(files):
            package = Path(tmp) / str(i) / Path(file).stem
            package.mkdir(parents=True)
            shutil.copyfile(file, package / "__init__.py")
            folders[file] = str(package)
        yield {**runtime_env, "py_modules": [folders.get(m, m) for m in runtime_env["py_modules"]]}
