"""Ray Job Submission client: `plateau submit | status | logs | stop | jobs`.

A job is `plateau run SPEC` executed on a Ray cluster by Ray's job server (the dashboard,
`http://HEAD:8265`). `submit` validates the spec here first, so a bad spec never reaches the
cluster, then uploads the project directory as the job's `working_dir` and starts::

    python -m service.cli run jobs/x.yaml --address auto --set key=value ...

Choices, and why:

- working_dir = the project root: the nearest directory above the spec (else above the current
  directory) that holds `pyproject.toml` and `service/cli.py`. Ray unpacks it on the cluster
  and makes it the entrypoint's current directory, so `python -m service.cli` imports the code
  you submitted (the current directory comes first on `sys.path`), and relative paths in the
  spec (a compare spec's `base:`, a data file under the project) resolve as they do locally.
  Results, caches, virtualenvs, `.git` and `*.egg-info` are not uploaded.
- The interpreter is `python`, looked up on the cluster's PATH when the job starts: on the
  Ray docker image (cluster.yaml) that is the image's Python, where the setup commands
  installed the project's dependencies. The CLI passes another one (`PLATEAU_JOB_PYTHON` on
  the submitting side) when the cluster's `python` is not the one with the project's
  dependencies (e.g. a local head started from a virtualenv that is not on PATH).
- `entrypoint_num_cpus=0`: the driver only waits on Ray Train, so it reserves no CPU; a
  2-CPU head still fits two 1-CPU training workers. Without entrypoint resources Ray runs the
  driver on the head node, which is where cluster.yaml puts no GPUs: the GPUs stay free for
  the workers.
- submission id `plateau-NAME-YYYYmmdd-HHMMSS` (a `-2`, `-3`... suffix if that one is taken);
  metadata {product: plateau, spec, kind, spec_file, user}. `plateau jobs` lists only jobs
  whose id starts with `plateau-` or whose metadata says product plateau.
- Token auth (Ray 2.60): the CLI finds the token (RAY_AUTH_TOKEN, else the file named by
  RAY_AUTH_TOKEN_PATH, else `~/.ray/auth_token`; none with RAY_AUTH_MODE=disabled) and it is
  sent whenever there is one; a cluster without token auth ignores it.
- Every request has a short connection timeout, so an unreachable address fails in seconds.
- `submit` waits for a job server that is starting (`ServerWait`): a head just started may
  refuse connections for a few seconds (its dashboard has not opened its port), then answer
  "No available agent to submit job, please try again later" (HTTP 500) until the job agent of
  the head node registers. Both are retried with backoff, with a `waiting for the job server
  at URL: ...` line on stderr every 10 s, up to `--wait-server` seconds in all (default 60);
  refused connections only for the first `REFUSED_WINDOW_S` of it, as an address that still
  refuses is a wrong one. Then one line, exit 2. Any other error is reported at once.

Every function returns the process exit code: 0 ok, 1 the job failed (FAILED or STOPPED),
2 bad input (spec, address, token, unknown job id). Errors are one `plateau: ...` line on
stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import functools
import getpass
import json
import logging
import re
import shlex
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from ray.job_submission import JobSubmissionClient

from service.compat import ray as compat_ray
from service.console import text_table
from service.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, BadInput, one_line
from service.grid import expand
from service.spec import BUILD_KEY, Spec, load_spec, parse_override
from service.storage import is_node_local
from service.submitting import (ADDRESS_HINT, JobError, _suggest, builder_code,  # noqa: F401 - jobs.X
                                check_builders, check_job_server_address, find_project_root,
                                refuse_placeholder_buckets, storage_of)

if TYPE_CHECKING:
    from ray.job_submission import JobDetails

JOB_PREFIX = "plateau-"
PRODUCT = "plateau"
DEFAULT_PYTHON = "python"
ENTRYPOINT_NUM_CPUS = 0

CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 60.0
UPLOAD_READ_TIMEOUT_S = 600.0
POLL_S = 1.0
STOP_WAIT_S = 30.0
# Waiting for a starting job server (`ServerWait`): the default bound (`--wait-server`), how
# long refused connections count as a head still starting, a line this often, the backoff.
WAIT_SERVER_S = 60.0
REFUSED_WINDOW_S = 15.0
SAY_EVERY_S = 10.0
FIRST_RETRY_S, MAX_RETRY_S = 1.0, 5.0
NO_AGENT = "No available agent to submit job"

# Never uploaded with the working dir (gitignore syntax, relative to the project root).
EXCLUDES = [
    ".git/", "results/", "__pycache__/", "*.pyc", ".pytest_cache/", ".mypy_cache/", ".ruff_cache/",
    ".ipynb_checkpoints/", ".venv/", "venv/", "env/", ".tox/", ".nox/", "*.egg-info/", "build/",
    "dist/",
]

TOKEN_HINT = ("set RAY_AUTH_TOKEN to the cluster's token (print it on the head with `ray get-auth-token`) "
              "or save it in ~/.ray/auth_token")


# ---------------------------------------------------------------------------------------------
# Plumbing


def _command(fn: Callable[..., int]) -> Callable[..., int]:
    """Turn expected errors into one stderr line and exit code 2, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> int:
        try:
            return fn(*args, **kwargs)
        except BadInput as exc:
            for line in str(exc).splitlines():  # a spec with several errors: one line each
                print(f"plateau: {one_line(line, 1000)}", file=sys.stderr)
            return EXIT_BAD_INPUT

    return wrapper


def _quiet_ray_logs() -> None:
    """Ray's client logs its uploads and websocket closes at INFO; we print our own lines.

    Call after importing ray.job_submission: its module sets its own logger level on import.
    """
    for name in compat_ray.QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def _http_error(exc: Exception, address: str, job_id: str | None = None) -> JobError:
    """Map what Ray's client raises to one actionable line."""
    import requests

    text = one_line(exc)
    if type(exc).__name__ == "AuthenticationError" or "Authentication" in text[:40]:
        if "failed" in text.lower() or "403" in text or "invalid" in text.lower():
            return JobError(f"the cluster at {address} refused the token; {TOKEN_HINT}")
        return JobError(f"the cluster at {address} requires a token; {TOKEN_HINT}")
    if isinstance(exc, requests.exceptions.Timeout):
        return JobError(f"the job server at {address} did not answer in time; is the cluster up? {ADDRESS_HINT}")
    if isinstance(exc, (ConnectionError, requests.exceptions.ConnectionError)):
        return JobError(f"cannot reach a job server at {address}; is the cluster up? {ADDRESS_HINT}")
    if job_id is not None and ("404" in text or "does not exist" in text):
        return JobError(f"no job {job_id!r} on the cluster at {address}; `plateau jobs` lists them")
    if "404" in text:
        return JobError(f"{address} answered but is not a Ray job server; {ADDRESS_HINT}")
    return JobError(f"the job server at {address} failed: {text}")


# Ray's client with a short connection timeout on every request: an unreachable address fails in
# seconds instead of hanging.
_TimelyClient = compat_ray.timely_job_client(lambda method: (
    CONNECT_TIMEOUT_S, UPLOAD_READ_TIMEOUT_S if method.upper() in ("PUT", "POST") else READ_TIMEOUT_S))


def starting_reason(exc: BaseException) -> Optional[str]:
    """What says that the job server is still starting, in words ("refuses connections", "has
    no job agent yet"); None for any other error."""
    seen: list[BaseException] = []
    while exc is not None and exc not in seen:  # Ray re-raises requests' errors as its own
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    text = " ".join(str(e) for e in seen)
    if NO_AGENT in text:
        return "has no job agent yet"
    if any(isinstance(e, ConnectionRefusedError) for e in seen) or "Connection refused" in text:
        return "refuses connections"
    return None


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclasses.dataclass
class ServerWait:
    """How `submit` waits for a job server that is starting: `call(action)` retries what
    `starting_reason` names, with backoff, up to `limit_s` from when the wait was made (refused
    connections: up to `REFUSED_WINDOW_S` of it), saying so every `SAY_EVERY_S`; then one
    JobError. The clock and sleep are parameters, for a test's fake clock.

    Example::

        wait = ServerWait(60)
        wait.call(lambda: client.submit_job(...), "http://127.0.0.1:8265")
    """

    limit_s: float = WAIT_SERVER_S
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    say: Callable[[str], None] = _to_stderr

    def __post_init__(self) -> None:
        self.started = self.clock()
        self._said: Optional[float] = None
        self._delay = FIRST_RETRY_S

    def call(self, action: Callable[[], Any], address: str) -> Any:
        while True:
            try:
                return action()
            except Exception as exc:  # noqa: BLE001 - only a starting server is retried
                reason = starting_reason(exc)
                if reason is None:
                    raise
                self._pause(reason, address, exc)

    def _pause(self, reason: str, address: str, exc: Exception) -> None:
        """Sleep before the next try, with a line every SAY_EVERY_S; JobError once out of time."""
        now = self.clock()
        waited = now - self.started
        bound = self.limit_s if reason == "has no job agent yet" else min(self.limit_s, REFUSED_WINDOW_S)
        if waited >= bound:
            raise self._gave_up(reason, address, waited, exc)
        if self._said is None or now - self._said >= SAY_EVERY_S:
            self.say(f"waiting for the job server at {address}: it {reason} ({waited:.0f}s of --wait-server "
                     f"{self.limit_s:g}s)")
            self._said = now
        self.sleep(min(self._delay, bound - waited))
        self._delay = min(self._delay * 2, MAX_RETRY_S)

    def _gave_up(self, reason: str, address: str, waited: float, exc: Exception) -> JobError:
        if reason == "refuses connections":
            return JobError(f"cannot reach a job server at {address}: it refused connections for {waited:.0f}s; "
                            f"is the cluster up? {ADDRESS_HINT}")
        return JobError(f"the job server at {address} still had no job agent after {waited:.0f}s ({NO_AGENT}); the "
                        f"head is starting or its agent is down: submit again later, or wait longer with "
                        f"--wait-server SECONDS")


class JobServer:
    """A cluster's job server: Ray's JobSubmissionClient with short timeouts, and the address it
    was reached at (for messages)."""

    def __init__(self, client: JobSubmissionClient, address: str):
        self.client, self.address = client, address

    @classmethod
    def connect(cls, address: str | None, token: Optional[str] = None,
                wait: Optional[ServerWait] = None) -> "JobServer":
        """Reach the job server at `address` (checked first), sending `token` if there is one;
        through `wait`, a server that is starting is waited for."""
        address = check_job_server_address(address)
        _quiet_ray_logs()
        headers = {"Authorization": f"Bearer {token}"} if token else None
        try:
            if wait is None:
                client = _TimelyClient(address, headers=headers)
            else:
                client = wait.call(lambda: _TimelyClient(address, headers=headers), address)
        except JobError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure becomes one line
            raise _http_error(exc, address) from None
        return cls(client, address)

    def alive_nodes(self) -> int:
        """How many nodes the cluster has now (0 when the server will not say)."""
        import requests

        headers = compat_ray.client_headers(self.client)
        try:
            reply = requests.get(f"{self.address}/api/v0/nodes", params={"limit": 10000}, headers=headers,
                                 timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S))
            nodes = reply.json()["data"]["result"]["result"]
        except Exception:  # noqa: BLE001 - only a warning depends on it
            return 0
        return sum(1 for n in nodes if n.get("state") == "ALIVE")

    def call(self, fn: Callable[..., Any], *args: Any, job_id: str | None = None) -> Any:
        """`fn(*args)` on the client, any failure as one JobError line."""
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001
            raise _http_error(exc, self.address, job_id) from None


# ---------------------------------------------------------------------------------------------
# Submission


def _user() -> str:
    try:
        return getpass.getuser()  # LOGNAME / USER, else the password database
    except Exception:  # noqa: BLE001 - no passwd entry and no variable, in some containers
        return "unknown"


def build_submission(spec_path: str, overrides: list[str], python: str = DEFAULT_PYTHON,
                     fresh: bool = False) -> dict[str, Any]:
    """Everything `submit` sends, computed and checked locally (no cluster needed).

    `python` is the interpreter the job runs on the cluster; `fresh` passes `--fresh` on.
    """
    spec = load_spec(spec_path, overrides)  # SpecError -> exit 2, nothing submitted
    refuse_placeholder_buckets(spec)
    root = find_project_root(spec_path)
    check_builders([t.spec for t in expand(spec)] if spec.kind == "compare" else [spec])
    py_modules, builder_overrides = builder_code(spec, root)
    resolved = Path(spec_path).resolve()
    try:
        rel = resolved.relative_to(root)
    except ValueError:
        raise JobError(
            f"spec {spec_path!r} is outside the project directory {root.name}/ that is uploaded as "
            "the job's working dir; move or copy it into the project (e.g. jobs/)"
        ) from None
    # `--address auto` joins the cluster the job runs on (Ray sets RAY_ADDRESS for job drivers).
    parts = [python, "-m", "service.cli", "run", rel.as_posix(), "--address", "auto"]
    if builder_overrides:  # the builder as the cluster finds it, in place of how it is found here
        overrides = [o for o in overrides if parse_override(o)[0] not in (BUILD_KEY, f"base.{BUILD_KEY}")]
    for text in [*overrides, *builder_overrides]:
        parts += ["--set", text]
    if fresh:
        parts.append("--fresh")
    excludes = list(EXCLUDES)
    output = Path(spec.output)
    if not output.is_absolute() and output.parts and output.parts[0] not in ("..", "."):
        excludes.append(f"/{output.as_posix()}/")  # earlier results stay home
    return {
        "spec": spec,
        "entrypoint": " ".join(shlex.quote(p) for p in parts),
        "runtime_env": {
            "working_dir": str(root),
            "excludes": excludes,
            "env_vars": {"PYTHONUNBUFFERED": "1"},  # logs arrive as they are written
            # the builder's code from outside the project, on the job's (and its workers') import path
            **({"py_modules": py_modules} if py_modules else {}),
        },
        "metadata": {
            "product": PRODUCT,
            "spec": spec.name,
            "kind": spec.kind,
            "spec_file": rel.as_posix(),
            "user": _user(),
        },
        "entrypoint_num_cpus": ENTRYPOINT_NUM_CPUS,
    }


def warn_if_checkpoints_stay_on_one_node(spec: Spec, nodes: int) -> None:
    """One line when a multi-worker run on a multi-node cluster keeps checkpoints on a node's own
    disk: a worker restarted on another node could not resume from them."""
    output, train_spec = storage_of(spec)
    scaling = train_spec.scaling
    where = scaling.storage_path or f"{output}/{train_spec.name}/checkpoints"
    shared = [scaling.storage_path] if scaling.storage_shared and scaling.storage_path else []
    if nodes > 1 and train_spec.max_workers > 1 and is_node_local(where, shared_mounts=shared):
        print(f"warning: checkpoints go to {where}, a path on one node's disk, and the cluster has {nodes} "
              "nodes: a restarted worker on another node cannot resume; set scaling.storage_path to shared "
              "storage (s3://..., gs://...), or scaling.storage_shared: true if that path is mounted on every node",
              file=sys.stderr)


def submission_id(name: str, now: float | None = None) -> str:
    return f"{JOB_PREFIX}{name}-{time.strftime('%Y%m%d-%H%M%S', time.localtime(now))}"


@_command
def submit(spec_path: str, address: str | None, overrides: list[str], *, wait: bool, follow: bool,
           token: Optional[str] = None, python: str = DEFAULT_PYTHON, fresh: bool = False,
           wait_server: float = WAIT_SERVER_S) -> int:
    """Submit the spec; `wait_server`: seconds to wait for a job server that is starting."""
    job = build_submission(spec_path, overrides, python, fresh)  # local checks first: bad spec -> exit 2
    starting = ServerWait(wait_server)
    server = JobServer.connect(address, token, wait=starting)
    warn_if_checkpoints_stay_on_one_node(job["spec"], server.alive_nodes())
    base = submission_id(job["spec"].name)
    job_id = base
    for attempt in range(2, 12):
        try:
            with compat_ray.job_py_modules(copy.deepcopy(job["runtime_env"])) as runtime_env:  # Ray's client rewrites it
                job_id = starting.call(lambda: server.client.submit_job(
                    entrypoint=job["entrypoint"],
                    submission_id=job_id,
                    runtime_env=runtime_env,
                    metadata=job["metadata"],
                    entrypoint_num_cpus=job["entrypoint_num_cpus"],
                ), server.address)
            break
        except JobError:
            raise
        except Exception as exc:  # noqa: BLE001
            if "already exists" in str(exc) or "already been used" in str(exc):
                job_id = f"{base}-{attempt}"
                continue
            raise _http_error(exc, server.address) from None
    else:
        raise JobError(f"could not find a free submission id like {base!r}; try again in a second")
    print(job_id, flush=True)
    addr = server.address
    if not (wait or follow):
        print(f"submitted to {addr}; watch it with: plateau logs {job_id} --follow --address {addr}",
              file=sys.stderr)
        return EXIT_OK
    if follow:
        return _follow(server, job_id)
    return _wait(server, job_id)


# ---------------------------------------------------------------------------------------------
# Watching


def _info(server: JobServer, job_id: str):
    return server.call(server.client.get_job_info, job_id, job_id=job_id)


def _poll_until_done(server: JobServer, job_id: str, timeout: float | None = None):
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        info = _info(server, job_id)
        if info.status.is_terminal() or (deadline is not None and time.monotonic() >= deadline):
            return info
        time.sleep(POLL_S)


def _error_line(server: JobServer, info: JobDetails) -> str | None:
    """The most telling line of a failed job: its `plateau: ...` line, else the last error."""
    text = ""
    with contextlib.suppress(Exception):
        text = server.client.get_job_logs(info.submission_id) or ""
    if not text:
        text = info.message or ""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.startswith("plateau: "):
            return ln.removeprefix("plateau: ")
    for ln in reversed(lines):
        if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b.*", ln):
            return ln
    return one_line(info.message) if info.message else None


def _finish(server: JobServer, info: JobDetails) -> int:
    """Final line of --wait/--follow, and the exit code for the job's terminal status."""
    status = str(info.status)
    if status == "SUCCEEDED":
        print(f"{info.submission_id}: SUCCEEDED ({_duration(info)})", flush=True)
        return EXIT_OK
    if status == "FAILED":
        why = _error_line(server, info)
        print(f"plateau: job {info.submission_id} FAILED" + (f": {one_line(why)}" if why else ""),
              file=sys.stderr)
        return EXIT_FAILED
    print(f"plateau: job {info.submission_id} {status}", file=sys.stderr)
    return EXIT_FAILED


def _interrupted(job_id: str, address: str) -> int:
    print(f"plateau: stopped watching; job {job_id} keeps running "
          f"(plateau stop {job_id} --address {address} ends it)", file=sys.stderr)
    return EXIT_FAILED


def _wait(server: JobServer, job_id: str) -> int:
    try:
        return _finish(server, _poll_until_done(server, job_id))
    except KeyboardInterrupt:
        return _interrupted(job_id, server.address)


def _stream_logs(server: JobServer, job_id: str) -> bool:
    """Print the job's logs as they come until it ends; False if the stream broke."""

    async def tail() -> None:
        async for chunk in server.client.tail_job_logs(job_id):
            sys.stdout.write(chunk)
            sys.stdout.flush()

    try:
        asyncio.run(tail())
        return True
    except KeyboardInterrupt:
        raise
    except Exception:  # noqa: BLE001 - fall back to polling
        return False


def _follow(server: JobServer, job_id: str) -> int:
    try:
        _info(server, job_id)  # unknown id -> one line, before opening a stream
        if not _stream_logs(server, job_id):
            print(f"plateau: lost the log stream of {job_id}; waiting for it to end", file=sys.stderr)
        return _finish(server, _poll_until_done(server, job_id))
    except KeyboardInterrupt:
        return _interrupted(job_id, server.address)


# ---------------------------------------------------------------------------------------------
# status, logs, stop, jobs


def _when(ms: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000)) if ms else "-"


def _duration(info: JobDetails) -> str:
    if not info.start_time:
        return "-"
    end = info.end_time or time.time() * 1000
    seconds = max(0, int((end - info.start_time) / 1000))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def _exit_for(status: str) -> int:
    return EXIT_FAILED if status in ("FAILED", "STOPPED") else EXIT_OK


def job_json(info: JobDetails) -> dict[str, Any]:
    """A job as `--json` prints it: Ray's fields, times as ISO text, the duration in seconds."""
    def when(ms: int | None) -> Optional[str]:
        return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(ms / 1000)) if ms else None

    end = info.end_time or (time.time() * 1000 if info.start_time else None)
    return {"job_id": info.submission_id, "status": str(info.status), "metadata": info.metadata or {},
            "entrypoint": info.entrypoint, "started": when(info.start_time), "ended": when(info.end_time),
            "duration_s": round((end - info.start_time) / 1000, 1) if info.start_time else None,
            "message": info.message, "driver_exit_code": info.driver_exit_code}


@_command
def status(job_id: str, address: str | None, token: Optional[str] = None, as_json: bool = False) -> int:
    server = JobServer.connect(address, token)
    info = _info(server, job_id)
    if as_json:
        data = job_json(info)
        if str(info.status) == "FAILED":
            data["error"] = one_line(_error_line(server, info) or "-")
        print(json.dumps(data, indent=2))
        return _exit_for(str(info.status))
    meta = info.metadata or {}
    rows = [
        ("job", info.submission_id or job_id),
        ("status", str(info.status)),
        ("spec", f"{meta.get('spec', '-')} ({meta.get('kind', '?')}, {meta.get('spec_file', '?')})"
         if meta.get("spec") else "-"),
        ("user", meta.get("user", "-")),
        ("started", _when(info.start_time)),
        ("ended", _when(info.end_time)),
        ("duration", _duration(info)),
        ("entrypoint", info.entrypoint),
    ]
    if str(info.status) == "FAILED":
        rows.append(("error", one_line(_error_line(server, info) or "-")))
        if info.driver_exit_code is not None:
            rows.append(("exit code", str(info.driver_exit_code)))
    elif info.message:
        rows.append(("message", one_line(info.message)))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key + ':':<{width + 1}} {value}")
    return _exit_for(str(info.status))


@_command
def logs(job_id: str, address: str | None, *, follow: bool, token: Optional[str] = None) -> int:
    server = JobServer.connect(address, token)
    if follow:
        return _follow(server, job_id)
    text = server.call(server.client.get_job_logs, job_id, job_id=job_id)
    sys.stdout.write(text)
    if text and not text.endswith("\n"):
        sys.stdout.write("\n")
    sys.stdout.flush()
    return EXIT_OK


@_command
def stop(job_id: str, address: str | None, token: Optional[str] = None) -> int:
    server = JobServer.connect(address, token)
    info = _info(server, job_id)
    if info.status.is_terminal():
        print(f"{job_id}: already {info.status}; nothing to stop")
        return EXIT_OK
    server.call(server.client.stop_job, job_id, job_id=job_id)
    info = _poll_until_done(server, job_id, timeout=STOP_WAIT_S)
    if info.status.is_terminal():
        print(f"{job_id}: {info.status}")
    else:
        print(f"{job_id}: stop requested (still {info.status}; plateau status {job_id} to check)")
    return EXIT_OK


def is_plateau_job(info: JobDetails) -> bool:
    return bool((info.submission_id or "").startswith(JOB_PREFIX)
                or (info.metadata or {}).get("product") == PRODUCT)


@_command
def list_jobs(address: str | None, token: Optional[str] = None, as_json: bool = False) -> int:
    server = JobServer.connect(address, token)
    jobs = [j for j in server.call(server.client.list_jobs) if is_plateau_job(j)]
    if as_json:
        print(json.dumps([job_json(j) for j in sorted(jobs, key=lambda j: j.start_time or 0)], indent=2))
        return EXIT_OK
    if not jobs:
        print(f"no plateau jobs on {server.address}")
        return EXIT_OK
    jobs.sort(key=lambda j: j.start_time or 0)
    rows = [(j.submission_id or "-", (j.metadata or {}).get("spec", "-"), str(j.status),
             _when(j.start_time), _duration(j)) for j in jobs]
    print(text_table(("ID", "SPEC", "STATUS", "START", "DURATION"), rows))
    return EXIT_OK
