r"""A real multi-node Ray cluster on one machine, for tests: a head plus worker nodes, each its
own `ray start --block` process with its own raylet, ports, Ray temp dir and HOME.

Fixtures (tests/support/fixtures.py, registered for every test module by tests/conftest.py):

- `multinode_cluster` (module scope): a head with 0 CPUs and two 1-CPU worker nodes "n1" and
  "n2". The head runs the GCS, the job server and the job drivers (plateau submits with
  `entrypoint_num_cpus=0`, which keeps a driver on the head whatever its CPUs) but has no CPU to
  offer, so every task or actor that asks for a CPU - Ray Train workers, Tune trials - lands on
  a worker node. With one head CPU, Ray Train's default PACK placement could put a training
  worker beside the driver, and a test about nodes would prove nothing. Caveat: an actor
  created with Ray's defaults (`ray.util.queue.Queue()` is one) needs 1 CPU to be *scheduled*,
  so it lands on a worker node too, and dies with that node.
- `ray_head`: the same `LocalCluster` with 4 head CPUs and no worker nodes.

API: `LocalCluster(head_cpus).start()` (`.start(wait=False)`: a head still starting); `.address`
(job server), `.gcs_address` (for `ray.init`), `.env` / `.driver_env` (client environments),
`.plateau(*args)`, `.run_driver(code)`;
`.add_node(name, num_cpus=1, resources=None) -> Node` (returns once ALIVE), `.remove_node(node)`
(a node loss), `.node_ids()` (name -> id of live nodes), `.node_name(id)`, `.node_states()`,
`.state(kind)` (Ray's state API), `.job(submission_id)`, `.shutdown()`. A `Node` has `.name`,
`.node_id`, `.sid` (its Unix session), `.processes()`, `.resource` ("node_<name>"), `.home`,
`.temp_dir`, `.session_dir`, `.owns(path)`.

What each node gets, and why:

- Every port Ray would otherwise take from a fixed default is picked free per node (GCS,
  dashboard and Ray Client server on the head; node manager, object manager, dashboard agent
  listen and gRPC, runtime-env agent, metrics export on every node; worker ports 0 = the OS
  picks), so nodes collide neither with each other nor with other Ray instances on the machine.
- A custom resource `node_<name>: 1` ("node_head", "node_n1", ...): a task targets a node with
  `resources={"node_n1": 0.01}`, and the state API maps node ids back to names.
- Its own Ray temp dir (`ROOT/<name>/ray`; Ray 2.60 honours `--temp-dir` on non-head nodes), so
  each node's runtime-env agent unpacks a job's `working_dir` under that node's session dir,
  and a relative path written by a task lands in that node's copy. Its own HOME and (worker
  nodes) TMPDIR under `ROOT/<name>/home`, inherited by every process on the node: `~/x` and
  `tempfile` paths are that node's "local disk", although all nodes share one filesystem.
  `Node.owns(path)` says whether a path is in a node's directories.
- Token auth on every node (RAY_AUTH_MODE=token). A worker node needs both the mode and the
  head's token to join: Ray 2.60 turns token auth on by itself only for `ray start --head` (when
  a token exists) and `ray.init()`, never for `ray start --address`. Worker nodes get the token
  as RAY_AUTH_TOKEN (a copy of the head's ~/.ray/auth_token in the node's HOME works as well).
- The GCS declares a node dead after 5 failed health checks 1 s apart (Ray: 5 x 3 s); a killed
  raylet fails each at once, so a test of node loss waits ~5 s, not ~15 s.
- Start-up: a raylet gives its dashboard agent 15 s to come up and its `ray start` gives the
  raylet 30 s to register; on a loaded machine either can be missed ("The current node timed out
  during startup"), so a node that fails that way is started again (3 attempts).

A node is removed the way a machine is lost: `remove_node` SIGKILLs the node's `ray start`
session and every descendant (raylet, agents, workers, whatever they spawned), found through
/proc, then waits until the GCS reports the node DEAD. Nothing else is signalled. Teardown
never runs `ray stop`: that kills every Ray process on the machine, including other people's.

The same cluster by hand (a head and two 1-CPU nodes; any free ports in place of these):

    export RAY_AUTH_MODE=token RAY_USAGE_STATS_ENABLED=0
    export RAY_AUTH_TOKEN=$(python -c 'import secrets; print(secrets.token_hex(32))')
    R=$(mktemp -d /tmp/ray-local-XXXX)

    # ray_node NAME ARGS...: `ray start --block ARGS` as node NAME, in a session of its own
    # (its id goes to $R/NAME/sid), with its own HOME, TMPDIR and Ray temp dir under $R/NAME.
    ray_node() {
      mkdir -p "$R/$1/home"
      HOME="$R/$1/home" TMPDIR="$R/$1/home" setsid sh -c 'echo $$ > "$0/sid"; exec ray start --block "$@"' "$R/$1" \
          --node-ip-address 127.0.0.1 --temp-dir "$R/$1/ray" --disable-usage-stats \
          --num-gpus 0 --min-worker-port 0 --max-worker-port 0 --resources "{\"node_$1\": 1}" \
          "${@:2}" > "$R/$1/ray.log" 2>&1 < /dev/null &
    }

    RAY_health_check_period_ms=1000 RAY_health_check_failure_threshold=5 \
    ray_node head --head --port 46379 --num-cpus 0 --object-store-memory 200000000 \
        --dashboard-host 127.0.0.1 --dashboard-port 48265 --ray-client-server-port 40001 \
        --node-manager-port 40100 --object-manager-port 40101 --dashboard-agent-listen-port 40102 \
        --dashboard-agent-grpc-port 40103 --runtime-env-agent-port 40104 --metrics-export-port 40105
    until ray status --address 127.0.0.1:46379 > /dev/null 2>&1; do sleep 2; done
    for n in 1 2; do
      ray_node n$n --address 127.0.0.1:46379 --num-cpus 1 --object-store-memory 100000000 \
          --node-manager-port 40${n}10 --object-manager-port 40${n}11 --dashboard-agent-listen-port 40${n}12 \
          --dashboard-agent-grpc-port 40${n}13 --runtime-env-agent-port 40${n}14 --metrics-export-port 40${n}15
    done
    ray status --address 127.0.0.1:46379      # 3 nodes; node_n1 and node_n2 among the resources
    # (a node whose $R/nN/ray.log ends in "timed out during startup": run its ray_node line again)

    plateau submit jobs/seed-reduce-lr.yaml --address http://127.0.0.1:48265 --data sample \
        --epochs 2 --wait --set scaling.num_workers=2 --set output=$R/results

  Tear down by session id, never `ray stop`. Job drivers run in sessions of their own, as
  children of the head's processes, so those sessions go too:

    # kill_node NAME: SIGKILL node NAME's session and the sessions its children started.
    kill_node() {
      local s sids
      s=$(cat "$R/$1/sid")
      sids=$(ps -o sid= --ppid "$(pgrep -d, -s "$s")" 2>/dev/null | tr -d ' ' | sort -u | paste -sd, -)
      pkill -9 -s "$s${sids:+,$sids}"
    }
    kill_node n2            # a node loss: `ray status` shows it dead ~5 s later
    kill_node n1; kill_node head; rm -rf "$R"
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from tests.support.project import PROJECT_ROOT

START_TIMEOUT_S = 120
NODE_DEAD_TIMEOUT_S = 60
START_ATTEMPTS = 3
# Variables of the caller that would point a client or a node at another cluster or token.
CLIENT_ENV_DROP = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH",
                   "RAY_AUTH_MODE")
# Node loss is noticed by the GCS health check. A killed raylet fails each check at once
# (connection refused), so 5 checks 1 s apart declare it dead in ~5 s (Ray: 5 x 3 s); a live but
# starved raylet still has Ray's 10 s per check to answer.
HEAD_FAST_DEATH = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "5"}
# Ray's floor is 75 MiB; the bundled sample is a few MB. Small stores keep 3 nodes in memory.
HEAD_OBJECT_STORE = 200 * 1024 * 1024
NODE_OBJECT_STORE = 100 * 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_bin() -> str:
    ray_bin = Path(sys.executable).parent / "ray"
    return str(ray_bin) if ray_bin.exists() else "ray"


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


def session_processes(sid: int) -> set[int]:
    """Live processes of session `sid` and all their descendants (whatever their session).

    Descendants matter: Ray starts job drivers in sessions of their own.
    """
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


def cmdline(pid: int) -> str:
    """A process's command line ('' if it is gone); Ray workers show their proctitle here."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _signal_all(pids: set[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def kill_session(proc: subprocess.Popen, grace_s: float = 0.0) -> None:
    """End the session `proc` leads and every process it spawned, by id.

    grace_s > 0 sends SIGTERM first; 0 is a node loss (SIGKILL at once). `ray start --block`
    and the raylet outlive SIGTERM for 10 s and more, and a throwaway cluster needs no
    graceful drain, so teardown's grace is short.
    """
    sid = proc.pid
    pids = session_processes(sid) | {proc.pid}
    if grace_s > 0:
        _signal_all(pids, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            proc.poll()
            pids = {p for p in pids if _stat(p) is not None} | session_processes(sid)
            if not pids:
                break
            time.sleep(0.3)
    # Twice: a process forked between the scan and the kill is caught by the second scan.
    for _ in range(2):
        _signal_all(pids | session_processes(sid), signal.SIGKILL)
        pids = set()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


# --- nodes ------------------------------------------------------------------------------------


class NodeStartError(RuntimeError):
    pass


@dataclasses.dataclass
class Node:
    name: str
    root: Path               # everything of this node: home/, ray/ (Ray's temp dir), ray.log
    num_cpus: int
    resources: dict          # custom resources besides node_<name>
    ports: dict = dataclasses.field(default_factory=dict)
    proc: subprocess.Popen | None = None   # `ray start --block`, leader of the node's session
    node_id: str = ""        # the Ray node id (hex), known once the node is ALIVE

    @property
    def sid(self) -> int:
        """The node's Unix session id: its `ray start` process is the session leader."""
        return self.proc.pid

    @property
    def resource(self) -> str:
        """The custom resource naming this node: `resources={node.resource: 0.01}` targets it."""
        return f"node_{self.name}"

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def temp_dir(self) -> Path:
        return self.root / "ray"

    @property
    def log(self) -> Path:
        return self.root / "ray.log"

    @property
    def session_dir(self) -> Path:
        """This node's Ray session dir: logs/, sockets/, runtime_resources/ (unpacked working_dirs)."""
        return (self.temp_dir / "session_latest").resolve()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def processes(self) -> set[int]:
        """Pids of every live process of this node (its session and their descendants)."""
        return session_processes(self.sid) if self.proc is not None else set()

    def owns(self, path: str | os.PathLike) -> bool:
        """Whether `path` lies in this node's private directories (its "local disk")."""
        return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(self.root))

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text()[-chars:]
        except OSError:
            return ""


class LocalCluster:
    """A head (`start()`) plus any number of worker nodes (`add_node`) on this machine.

    `.address` is the job server (http://127.0.0.1:PORT), `.gcs_address` the GCS
    (127.0.0.1:PORT, for `ray.init`), `.env` the environment of a job client (temp HOME, the
    token as RAY_AUTH_TOKEN, PLATEAU_JOB_PYTHON, no inherited RAY_ADDRESS), `.driver_env` the
    same for a Ray driver.
    """

    def __init__(self, head_cpus: int = 0):
        # Short path: Ray's unix sockets live under each node's temp dir (~100-byte limit).
        self.root = Path(tempfile.mkdtemp(prefix="plateau-rc-", dir="/tmp"))
        self.head_cpus = head_cpus
        self.head: Node | None = None
        self.nodes: dict[str, Node] = {}      # the current node of each name, head included
        self.removed: list[Node] = []         # nodes lost through remove_node
        self._failed: list[Node] = []         # start attempts that did not join (kept for teardown)
        self.token = secrets.token_hex(32)
        self._base_env = {k: v for k, v in os.environ.items() if k not in CLIENT_ENV_DROP}
        self.address = self.gcs_address = ""
        self.env: dict = {}
        self.start_seconds = 0.0

    # --- life cycle ---

    def start(self, wait: bool = True) -> "LocalCluster":
        """Start the head; return once its job server answers and it is ALIVE in the GCS (with
        `wait=False`, as soon as its `ray start` is launched: a head still starting)."""
        started = time.monotonic()
        try:
            for attempt in range(START_ATTEMPTS if wait else 1):
                gcs, dash = free_port(), free_port()
                self.gcs_address = f"127.0.0.1:{gcs}"
                self.address = f"http://127.0.0.1:{dash}"
                head_args = ["--head", "--port", str(gcs), "--dashboard-host", "127.0.0.1",
                             "--dashboard-port", str(dash), "--include-dashboard", "true",
                             "--ray-client-server-port", str(free_port())]
                self.head = Node("head", self._new_root("head"), self.head_cpus, {})
                _write_token(self.head.home, self.token)   # `ray start --head` needs it to exist
                self._spawn(self.head, head_args, HEAD_OBJECT_STORE, HEAD_FAST_DEATH)
                self.env = dict(
                    self._base_env,
                    HOME=str(self.head.home),             # nothing lands in the user's ~/.ray
                    RAY_AUTH_TOKEN=self.token,
                    PLATEAU_JOB_PYTHON=sys.executable,    # the interpreter that has the project
                    PYTHONUNBUFFERED="1",
                )
                if not wait:
                    return self
                try:
                    self._wait_job_server()
                    self._wait_alive(self.head)
                    break
                except NodeStartError:
                    if attempt == START_ATTEMPTS - 1:
                        raise
                    self._give_up(self.head)
        except BaseException:
            self.shutdown()
            raise
        self.start_seconds = time.monotonic() - started
        return self

    def shutdown(self) -> None:
        """Kill every node's processes by pid (worker nodes first, the head last); delete ROOT."""
        workers = [n for n in [*self.nodes.values(), *self._failed] if n is not self.head]
        for node in [*workers, self.head]:
            if node is not None and node.proc is not None:
                kill_session(node.proc, grace_s=1.0 if node is self.head else 0)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.shutdown()

    # --- nodes ---

    def add_node(self, name: str, num_cpus: int = 1, resources: dict | None = None,
                 env: dict | None = None) -> Node:
        """Start a worker node; return once the GCS reports it ALIVE.

        `resources` are custom resources besides `node_<name>`; `env` overrides the node's
        environment (e.g. `{"RAY_AUTH_TOKEN": ""}` to start it without the token).
        """
        return self.add_nodes([name], num_cpus=num_cpus, resources=resources, env=env)[0]

    def add_nodes(self, names: list[str], num_cpus: int = 1, resources: dict | None = None,
                  env: dict | None = None) -> list[Node]:
        """Start several worker nodes at once (they boot in parallel); return when all are ALIVE."""
        for name in names:
            if name in self.nodes and self.nodes[name].alive():
                raise ValueError(f"node {name!r} is already running")

        def spawn(name: str) -> Node:
            return self._spawn_worker(Node(name, self._new_root(name), num_cpus, dict(resources or {})),
                                      env or {})

        nodes = [spawn(name) for name in names]
        for i in range(len(nodes)):
            for attempt in range(START_ATTEMPTS):
                try:
                    self._wait_alive(nodes[i])
                    break
                except NodeStartError:
                    self._give_up(nodes[i])
                    if attempt == START_ATTEMPTS - 1:
                        raise
                    nodes[i] = spawn(nodes[i].name)
                except BaseException:
                    self._give_up(nodes[i])
                    raise
        return nodes

    def remove_node(self, node: Node, timeout: float = NODE_DEAD_TIMEOUT_S) -> None:
        """Lose a node: SIGKILL its session and descendants, wait until the GCS says DEAD."""
        if node is self.head:
            raise ValueError("removing the head ends the cluster; use shutdown()")
        kill_session(node.proc, grace_s=0)
        deadline = time.monotonic() + 10   # SIGKILLed processes take a moment to become zombies
        while (left := node.processes()) and time.monotonic() < deadline:
            time.sleep(0.1)
        if left:
            raise RuntimeError(f"node {node.name}: processes survived SIGKILL: {sorted(left)}")
        self.removed.append(node)
        if self.nodes.get(node.name) is node:
            del self.nodes[node.name]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.node_states().get(node.node_id) == "DEAD":
                return
            time.sleep(0.5)
        raise TimeoutError(f"the GCS still reports node {node.name} ({node.node_id}) "
                           f"{self.node_states().get(node.node_id)} {timeout}s after its processes died")

    # --- what the GCS says (through the dashboard's state API: no ray.init in this process) ---

    def state(self, kind: str) -> list[dict]:
        """Records of Ray's state API (`ray list KIND --detail`): kind = nodes, actors, tasks,
        placement_groups, workers, ... Dead nodes and actors are listed too, with state DEAD."""
        import requests

        reply = requests.get(f"{self.address}/api/v0/{kind}", params={"limit": 10000, "detail": "true"},
                             headers=self._auth_header, timeout=30)
        reply.raise_for_status()
        return reply.json()["data"]["result"]["result"]

    def state_nodes(self) -> list[dict]:
        """The state API's node records: node_id, state (ALIVE/DEAD), resources_total, ..."""
        return self.state("nodes")

    def job(self, submission_id: str) -> dict:
        """The job server's record of a job: status, job_id (the Ray job id), driver_node_id, ..."""
        import requests

        reply = requests.get(f"{self.address}/api/jobs/{submission_id}", headers=self._auth_header, timeout=30)
        reply.raise_for_status()
        return reply.json()

    @property
    def _auth_header(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"}

    def node_states(self) -> dict[str, str]:
        """node id -> ALIVE | DEAD, for every node the cluster has had."""
        return {n["node_id"]: n["state"] for n in self.state_nodes()}

    def node_ids(self) -> dict[str, str]:
        """name -> node id of every ALIVE node, named by its `node_<name>` resource."""
        return {_name_of(r): r["node_id"] for r in self.state_nodes()
                if r["state"] == "ALIVE" and _name_of(r)}

    def node_name(self, node_id: str) -> str:
        """The name of the node with this id (alive or removed), '' if it is none of ours."""
        for node in [*self.nodes.values(), *self.removed]:
            if node.node_id == node_id:
                return node.name
        return ""

    # --- clients ---

    @property
    def driver_env(self) -> dict:
        """`env` for a Ray driver (`ray.init(address=gcs_address)`): unlike the job server's HTTP
        client, Ray's GCS client sends the token only when RAY_AUTH_MODE=token."""
        return dict(self.env, RAY_AUTH_MODE="token")

    def plateau(self, *args: str, timeout: float = 300, env: dict | None = None,
                address: bool = True) -> subprocess.CompletedProcess:
        """Run `plateau ARGS --address <job server>` as a user would; returns the completed process."""
        argv = [sys.executable, "-m", "service.cli", *args]
        if address:
            argv += ["--address", self.address]
        return subprocess.run(argv, cwd=PROJECT_ROOT, env=env or self.env, capture_output=True,
                              text=True, timeout=timeout)

    def run_driver(self, code: str, runtime_env: dict | None = None, timeout: float = 180) -> object:
        """Run `code` in a new Python process connected to the cluster (a Ray driver on the
        head's raylet: Ray prefers the head among nodes of one IP) and return what the code
        assigned to `result`, through JSON.

        A subprocess, not `ray.init` here: the test process stays free of Ray connections and
        of this cluster's token, whatever other tests do with Ray.
        """
        script = ("import json, os, sys, ray\n"
                  f"ray.init(address={self.gcs_address!r}, runtime_env={runtime_env!r},\n"
                  "         logging_level='ERROR', log_to_driver=False)\n"
                  "result = None\n" + textwrap.dedent(code) +
                  "\nsys.stdout.write('\\n@@RESULT@@' + json.dumps(result))\n")
        proc = subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT, env=self.driver_env,
                              capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0 or "@@RESULT@@" not in proc.stdout:
            raise RuntimeError(f"driver failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
        return json.loads(proc.stdout.rsplit("@@RESULT@@", 1)[1])

    # --- internals ---

    def _new_root(self, name: str) -> Path:
        root, n = self.root / name, 1
        while root.exists():   # a restarted or re-added name gets a fresh directory
            n += 1
            root = self.root / f"{name}.{n}"
        (root / "home").mkdir(parents=True)
        return root

    def _spawn_worker(self, node: Node, env: dict) -> Node:
        # The token as a variable: the node's own HOME has no ~/.ray/auth_token.
        self._spawn(node, ["--address", self.gcs_address], NODE_OBJECT_STORE,
                    {"RAY_AUTH_TOKEN": self.token, "TMPDIR": str(node.home), **env})
        return node

    def _spawn(self, node: Node, role_args: list[str], object_store: int, extra_env: dict) -> None:
        # A unix socket path has ~107 bytes; Ray's go under TEMP_DIR/session_<date>_<pid>/sockets/.
        if len(str(node.temp_dir)) > 40:
            raise ValueError(f"{node.temp_dir} is too long for Ray's unix sockets; use a shorter node name")
        node.ports = {flag: free_port() for flag in (
            "--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
            "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port")}
        cmd = [
            _ray_bin(), "start", "--block", *role_args, "--node-ip-address", "127.0.0.1",
            *[str(x) for kv in node.ports.items() for x in kv],
            # 0 = the OS picks each worker's port: Ray's default range 10002-19999 would be
            # shared by every raylet of the machine, and they do not coordinate.
            "--min-worker-port", "0", "--max-worker-port", "0",
            "--num-cpus", str(node.num_cpus), "--num-gpus", "0",
            "--resources", json.dumps({node.resource: 1, **node.resources}),
            "--object-store-memory", str(object_store),
            "--temp-dir", str(node.temp_dir), "--disable-usage-stats",
        ]
        env = {**self._base_env, "HOME": str(node.home), "RAY_AUTH_MODE": "token",
               "RAY_USAGE_STATS_ENABLED": "0", **extra_env}
        with open(node.log, "w") as out:
            node.proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        self.nodes[node.name] = node

    def _give_up(self, node: Node) -> None:
        """A start attempt that failed: end its processes, keep its directory for the record."""
        kill_session(node.proc, grace_s=0)
        self._failed.append(node)
        if self.nodes.get(node.name) is node:
            del self.nodes[node.name]

    def _check_running(self, node: Node) -> None:
        if node.proc.poll() is None:
            return
        tail = node.log_tail()
        # Ray gives a raylet a fixed 30 s to register with the GCS; a loaded machine misses it.
        error = NodeStartError if "timed out during startup" in tail else RuntimeError
        raise error(f"`ray start` of node {node.name} exited with {node.proc.returncode}:\n{tail}")

    def _wait_job_server(self) -> None:
        import requests

        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            self._check_running(self.head)
            try:
                # The job API (not just /api/version) answers once the job module is up.
                reply = requests.get(f"{self.address}/api/jobs/", headers=self._auth_header, timeout=5)
                if reply.status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"the job server at {self.address} did not come up in {START_TIMEOUT_S}s:\n"
                           f"{self.head.log_tail()}")

    def _wait_alive(self, node: Node) -> str:
        """Wait until the GCS lists `node` ALIVE; record and return its node id."""
        import requests

        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            self._check_running(node)
            try:
                alive = {r["node_id"] for r in self.state_nodes()
                         if r["state"] == "ALIVE" and _name_of(r) == node.name}
                # A start attempt given up on may linger ALIVE for a few seconds: skip its id.
                alive -= {n.node_id for n in [*self._failed, *self.removed] if n.node_id}
                if len(alive) == 1:
                    node.node_id = alive.pop()
                    return node.node_id
            except (requests.RequestException, KeyError, ValueError):
                pass
            time.sleep(0.5)
        raise RuntimeError(f"node {node.name} did not join in {START_TIMEOUT_S}s:\n{node.log_tail()}")


def _name_of(record: dict) -> str:
    """A node's name from its state-API record: the NAME of its one `node_NAME` resource."""
    names = [k[len("node_"):] for k in (record.get("resources_total") or {})
             if k.startswith("node_") and not k.startswith("node:")]
    return names[0] if len(names) == 1 else ""


def _write_token(home: Path, token: str) -> None:
    """What `ray get-auth-token --generate` does, with our token."""
    path = home / ".ray" / "auth_token"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(token)
    path.chmod(0o600)


def main(argv: list[str] | None = None) -> None:
    """`python -m tests.support.cluster [--nodes N]`: the test cluster, by hand, until Ctrl-C."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tests.support.cluster",
                                     description="A Ray head and worker nodes on this machine, each its own raylet; "
                                                 "Ctrl-C ends exactly their processes.")
    parser.add_argument("--nodes", type=int, default=2, help="worker nodes n1..nN (default 2)")
    parser.add_argument("--cpus", type=int, default=1, help="CPUs of each worker node (default 1)")
    parser.add_argument("--head-cpus", type=int, default=0, help="CPUs of the head (default 0: only drivers run there)")
    args = parser.parse_args(argv)
    cluster = LocalCluster(head_cpus=args.head_cpus)
    try:
        cluster.start()
        cluster.add_nodes([f"n{i}" for i in range(1, args.nodes + 1)], num_cpus=args.cpus)
        print(f"{len(cluster.nodes)} nodes up: {', '.join(cluster.nodes)}\n"
              f"  export RAY_AUTH_MODE=token RAY_AUTH_TOKEN={cluster.token}\n"
              f"  plateau submit SPEC --address {cluster.address} ...    # jobs\n"
              f"  plateau train SPEC --address {cluster.gcs_address} ...    # a driver here, workers on the nodes\n"
              "Ctrl-C stops the cluster.", flush=True)
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    main()
