"""A real Ray head for job tests: `ray start --head` with its own ports, temp dir and HOME.

Import the fixture into a test module (`from tests.ray_head import ray_head  # noqa: F401`).

- Token auth is on (RAY_AUTH_MODE=token), as on a real cluster; the token is generated into the
  temporary HOME's ~/.ray/auth_token (never the user's), and clients get it as RAY_AUTH_TOKEN.
- Every port Ray would otherwise take from a fixed default is picked free, so the head does not
  collide with other Ray instances on the machine.
- Teardown never runs `ray stop`: that kills every Ray process of the machine, including other
  people's. The head runs in its own session (`ray start --block` as session leader); teardown
  ends exactly the processes of that session and their descendants (the job drivers Ray starts
  in their own sessions), by process id: SIGTERM, then SIGKILL after a grace period.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 120
CLIENT_ENV_DROP = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH",
                   "RAY_AUTH_MODE")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclasses.dataclass
class RayHead:
    address: str          # the job server, http://127.0.0.1:PORT
    env: dict             # environment for clients (`plateau ...`) of this head
    root: Path            # temp dir holding the head's HOME, temp dir and log

    def plateau(self, *args: str, timeout: float = 300, env: dict | None = None,
                address: bool = True) -> subprocess.CompletedProcess:
        """Run `plateau ARGS --address <head>` as a user would; returns the completed process."""
        argv = [sys.executable, "-m", "service.cli", *args]
        if address:
            argv += ["--address", self.address]
        return subprocess.run(argv, cwd=PROJECT_ROOT, env=env or self.env, capture_output=True,
                              text=True, timeout=timeout)


# --- process bookkeeping (Linux /proc) -------------------------------------------------------


def _stat(pid: int) -> tuple[int, int] | None:
    """(ppid, session id) of a live process, None if it is gone or a zombie."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    if fields[0] == "Z":
        return None
    return int(fields[1]), int(fields[3])


def _session_processes(sid: int) -> set[int]:
    """Live processes of session `sid` and all their descendants (whatever their session)."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None:
                table[int(entry)] = st
    ours = {pid for pid, (_, session) in table.items() if session == sid}
    grew = True
    while grew:
        grew = False
        for pid, (ppid, _) in table.items():
            if pid not in ours and ppid in ours:
                ours.add(pid)
                grew = True
    ours.discard(os.getpid())
    return ours


def _signal_all(pids: set[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def stop_head(proc: subprocess.Popen, grace_s: float = 3.0) -> None:
    """End the head's session and every process it spawned, by id.

    `ray start --block` and the raylet outlive SIGTERM for 10 s and more; a throwaway head
    needs no graceful drain, so the grace period is short.
    """
    sid = proc.pid
    pids = _session_processes(sid) | {proc.pid}
    _signal_all(pids, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        proc.poll()
        pids = {p for p in pids if _stat(p) is not None} | _session_processes(sid)
        if not pids:
            break
        time.sleep(0.3)
    _signal_all(pids | _session_processes(sid), signal.SIGKILL)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


# --- start --------------------------------------------------------------------------------------


def _wait_ready(proc: subprocess.Popen, address: str, token: str | None, log: Path) -> None:
    import requests

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            # The job API (not just /api/version) answers once the job module is up.
            if requests.get(f"{address}/api/jobs/", headers=headers, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the job server at {address} did not come up in {START_TIMEOUT_S}s:\n"
                       f"{log.read_text()[-3000:]}")


def _write_token(home: Path) -> str:
    """What `ray get-auth-token --generate` does: `ray start` needs the token to exist."""
    token = secrets.token_hex(32)
    path = home / ".ray" / "auth_token"
    path.parent.mkdir(parents=True)
    path.write_text(token)
    path.chmod(0o600)
    return token


@pytest.fixture(scope="session")
def ray_head():
    # Short path: Ray's unix sockets live under --temp-dir and have a ~100-byte limit.
    root = Path(tempfile.mkdtemp(prefix="plateau-ray-"))
    home = root / "home"
    home.mkdir()
    base_env = {k: v for k, v in os.environ.items() if k not in CLIENT_ENV_DROP}
    head_env = dict(base_env, HOME=str(home), RAY_AUTH_MODE="token", RAY_USAGE_STATS_ENABLED="0")
    ray_bin = Path(sys.executable).parent / "ray"
    dash = free_port()
    cmd = [
        str(ray_bin) if ray_bin.exists() else "ray", "start", "--head", "--block",
        "--node-ip-address", "127.0.0.1", "--port", str(free_port()),
        "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--include-dashboard", "true",
        "--ray-client-server-port", str(free_port()),
        "--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
        "--runtime-env-agent-port", str(free_port()), "--metrics-export-port", str(free_port()),
        "--node-manager-port", str(free_port()), "--object-manager-port", str(free_port()),
        # 4 logical CPUs: two 1-CPU training workers, the job driver's helpers, and room to spare.
        "--num-cpus", "4", "--num-gpus", "0", "--object-store-memory", str(200 * 1024 * 1024),
        "--temp-dir", str(root / "ray"), "--disable-usage-stats",
    ]
    token = _write_token(home)
    log = root / "head.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=head_env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        address = f"http://127.0.0.1:{dash}"
        _wait_ready(proc, address, token, log)
        client_env = dict(
            base_env,
            HOME=str(home),                       # nothing lands in the user's ~/.ray
            RAY_AUTH_TOKEN=token,
            PLATEAU_JOB_PYTHON=sys.executable,    # the interpreter that has the project
            PYTHONUNBUFFERED="1",
        )
        yield RayHead(address=address, env=client_env, root=root)
    finally:
        stop_head(proc)
        shutil.rmtree(root, ignore_errors=True)
