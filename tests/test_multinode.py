"""The multi-node test cluster itself (tests/support/cluster.py), proven with real Ray.

A head with 0 CPUs and two 1-CPU worker nodes n1 and n2, each its own raylet. These tests
pin down what later tests rely on: nodes can be told apart and targeted, placement really
spreads, each node has its own directories, a node without the token cannot join, a removed
node is DEAD and takes nothing else with it, and a plateau job trains on the worker nodes.
"""

from __future__ import annotations

import contextlib
import csv
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from service import train
from service.report import files as run_files
from service.rundir import RunPaths
from service.spec import load_spec
from tests.support.cluster import LocalCluster, cmdline
from tests.support.engines import ENGINES
from tests.support.jobs import assert_job_views
from tests.support.limits import COMMAND_S, LONG_RUN_S, NODE_DEAD_WITHIN_S, REGROWN_WITHIN_S, SIGNAL_EXIT_WITHIN_S
from tests.support.project import PROJECT_ROOT
from tests.support.runs import by_epoch, make_spec, without_seconds
from tests.support.stock import stock_replay_on, stock_trace_on

pytestmark = pytest.mark.slow

SPEC = "jobs/seed-reduce-lr.yaml"
JOB_ID = re.compile(r"^plateau-[A-Za-z0-9._-]+-\d{8}-\d{6}(-\d+)?$", re.M)

# Ray's own long-lived processes on a node; its workers ("ray::...") come and go by design.
SYSTEM_PROCESSES = ("raylet", "gcs_server", "dashboard/agent.py", "runtime_env/agent/main.py",
                    "log_monitor.py", "dashboard.py", "ray start")


def _system_pids(node) -> set[int]:
    return {pid for pid in node.processes() if any(p in cmdline(pid) for p in SYSTEM_PROCESSES)}


def _submission_id(proc) -> str:
    match = JOB_ID.search(proc.stdout)
    assert match, proc.stdout + proc.stderr
    return match.group(0)


def _train_workers(cluster: LocalCluster, ray_job_id: str) -> list[dict]:
    return [a for a in cluster.state("actors")
            if a["class_name"] == "RayTrainWorker" and a["job_id"] == ray_job_id]


def test_three_nodes_with_their_own_resources_and_processes(multinode_cluster):
    cluster = multinode_cluster
    ids = cluster.node_ids()
    assert set(ids) == {"head", "n1", "n2"}
    assert len(set(ids.values())) == 3
    for name, node in cluster.nodes.items():
        assert node.node_id == ids[name]
        assert node.session_dir.parent == node.temp_dir   # each node keeps its session under its root

    totals = {cluster.node_name(r["node_id"]): r["resources_total"] for r in cluster.state_nodes()
              if r["state"] == "ALIVE"}
    assert totals["head"].get("CPU", 0) == 0        # nothing that needs a CPU runs beside the driver
    assert totals["n1"]["CPU"] == totals["n2"]["CPU"] == 1
    assert all(t.get("GPU", 0) == 0 for t in totals.values())
    assert totals["n1"]["node_n1"] == 1 and "node_n1" not in totals["n2"]

    sessions = {name: node.processes() for name, node in cluster.nodes.items()}
    assert all(sessions.values())
    assert not (sessions["head"] & sessions["n1"] or sessions["head"] & sessions["n2"]
                or sessions["n1"] & sessions["n2"])
    for node in cluster.nodes.values():   # one raylet per node, inside that node's session
        raylets = [p for p in sessions[node.name] if "/raylet/raylet " in cmdline(p)]
        assert len(raylets) == 1
        assert f"--node_id={node.node_id}" in cmdline(raylets[0])


def test_tasks_pinned_by_node_resource_run_there_in_that_nodes_directories(multinode_cluster, tmp_path):
    cluster = multinode_cluster
    (tmp_path / "marker.txt").write_text("shipped")
    result = cluster.run_driver("""
        import tempfile

        @ray.remote(num_cpus=0)
        def where():
            with open("marker.txt") as f:           # from the working_dir, unpacked on this node
                shipped = f.read()
            with open("written-here.txt", "w") as f:  # relative: lands in this node's copy
                f.write("x")
            return {"node_id": ray.get_runtime_context().get_node_id(), "cwd": os.getcwd(),
                    "home": os.path.expanduser("~"), "tmp": tempfile.gettempdir(), "shipped": shipped,
                    "written": os.path.abspath("written-here.txt")}

        result = {name: ray.get(where.options(resources={f"node_{name}": 0.01}).remote())
                  for name in ("head", "n1", "n2")}
        result["driver"] = ray.get_runtime_context().get_node_id()
    """, runtime_env={"working_dir": str(tmp_path)})

    ids = cluster.node_ids()
    assert result["driver"] == ids["head"]   # a driver on this host attaches to the head's raylet
    for name in ("head", "n1", "n2"):
        node, seen = cluster.nodes[name], result[name]
        assert seen["node_id"] == ids[name]
        assert seen["shipped"] == "shipped"
        # Each node unpacked the working_dir under its own session dir ...
        assert seen["cwd"].startswith(str(node.session_dir / "runtime_resources") + "/"), seen
        assert node.owns(seen["written"]) and node.owns(seen["home"])
        # ... and no other node's directories hold what it wrote.
        others = [n for n in cluster.nodes.values() if n is not node]
        assert not any(other.owns(seen["written"]) for other in others)
    assert result["n1"]["tmp"] == str(cluster.nodes["n1"].home)
    assert result["n2"]["tmp"] == str(cluster.nodes["n2"].home)


def test_strict_spread_placement_group_lands_on_two_distinct_nodes(multinode_cluster):
    cluster = multinode_cluster
    result = cluster.run_driver("""
        from ray.util.placement_group import placement_group, remove_placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        @ray.remote(num_cpus=1)
        def node_id():
            return ray.get_runtime_context().get_node_id()

        pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_SPREAD")
        ray.get(pg.ready(), timeout=120)
        placed = [ray.get(node_id.options(scheduling_strategy=PlacementGroupSchedulingStrategy(
                      pg, placement_group_bundle_index=i)).remote()) for i in range(2)]
        remove_placement_group(pg)
        # Three 1-CPU bundles on distinct nodes: only two nodes have a CPU.
        three = placement_group([{"CPU": 1}] * 3, strategy="STRICT_SPREAD")
        result = {"placed": placed, "three_ready": three.wait(timeout_seconds=5)}
        remove_placement_group(three)
    """)
    ids = cluster.node_ids()
    assert len(set(result["placed"])) == 2
    assert set(result["placed"]) == {ids["n1"], ids["n2"]}
    assert result["three_ready"] is False


def test_a_node_without_the_token_cannot_join(multinode_cluster):
    cluster = multinode_cluster
    before = cluster.node_states()
    with pytest.raises(RuntimeError, match="no authentication token was found"):
        # An empty RAY_AUTH_TOKEN counts as unset, and the node's HOME has no token file.
        cluster.add_node("nt", env={"RAY_AUTH_TOKEN": ""})
    assert cluster.node_states() == before
    assert "nt" not in cluster.nodes


def test_remove_node_kills_that_node_only(multinode_cluster):
    cluster = multinode_cluster
    n3 = cluster.add_node("n3")
    # Something of a job on n3: an actor process, pinned there.
    pid = cluster.run_driver("""
        @ray.remote(num_cpus=0, resources={"node_n3": 0.01})
        class Sleeper:
            def pid(self):
                return os.getpid()

        s = Sleeper.options(name="sleeper", lifetime="detached").remote()
        result = ray.get(s.pid.remote())
    """)
    assert pid in n3.processes()
    others = {name: _system_pids(node) for name, node in cluster.nodes.items() if node is not n3}
    ids_before = {name: i for name, i in cluster.node_ids().items() if name != "n3"}

    started = time.monotonic()
    cluster.remove_node(n3)
    removal_s = time.monotonic() - started

    states = cluster.node_states()
    assert states[n3.node_id] == "DEAD"
    assert not n3.processes() and not n3.alive()
    assert cmdline(pid) == ""
    assert cluster.node_ids() == ids_before
    assert all(states[i] == "ALIVE" for i in ids_before.values())
    for name, pids in others.items():
        assert pids <= cluster.nodes[name].processes(), f"{name} lost processes"
    assert removal_s < NODE_DEAD_WITHIN_S, f"the GCS took {removal_s:.1f}s to declare the node dead"


@pytest.mark.parametrize("engine", ENGINES)
def test_a_spread_job_trains_on_two_nodes_and_its_ranks_agree(multinode_cluster, tmp_path, engine):
    """`plateau submit` of a 2-worker train spec with STRICT_SPREAD: each rank on its own node,
    as the workers themselves report it, and the decisions are stock Keras's (the engine's Keras:
    keras_jax's two processes join over the network, each on its node)."""
    cluster = multinode_cluster
    proc = cluster.plateau("submit", SPEC, "--data", "sample", "--epochs", "3", "--wait",
                           "--set", "scaling.placement_strategy=STRICT_SPREAD", "--set", f"output={tmp_path}",
                           "--set", f"training.engine={engine}", timeout=LONG_RUN_S)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    submission_id = _submission_id(proc)
    assert f"{submission_id}: SUCCEEDED" in proc.stdout

    ids = cluster.node_ids()
    job = cluster.job(submission_id)
    assert job["driver_node_id"] == ids["head"]
    summary = json.loads((tmp_path / "seed-reduce-lr" / "summary.json").read_text())
    placement = summary["placement"]
    assert [p["rank"] for p in placement] == [0, 1]
    assert {p["node_id"] for p in placement} == {ids["n1"], ids["n2"]}   # two nodes, neither the head
    node_ips = {n["node_id"]: n["node_ip"] for n in cluster.state_nodes()}
    assert all(p["device"] == "CPU" and p["node_ip"] == node_ips[p["node_id"]] for p in placement)
    # The workers Ray reports for the job are the processes that reported themselves.
    actors = {(a["node_id"], a["pid"]) for a in _train_workers(cluster, job["job_id"])}
    assert {(p["node_id"], p["pid"]) for p in placement} == actors
    assert summary["ranks_agree"] is True and summary["epochs_run"] == 3

    decisions = run_files.read_decisions(tmp_path / "seed-reduce-lr" / "decisions.jsonl")
    spec = load_spec(tmp_path / "seed-reduce-lr" / "spec.yaml")
    lrs, stop_epoch, _ = stock_replay_on(engine, spec, [d["values"] for d in decisions if d["rank"] == 0])
    assert [d["lr_after"] for d in decisions if d["rank"] == 0] == lrs
    assert summary["stop_epoch"] == stop_epoch
    assert summary["replicas_identical"] is True
    assert_job_views(cluster, submission_id, epochs=3)


def test_a_submitted_builder_file_outside_the_project_trains_on_nodes_that_never_had_it(multinode_cluster, tmp_path):
    """A builder in a folder of its own, outside the project that `plateau submit` uploads: submit
    ships the file with the job (`py_modules`), and the file is gone from this disk before the
    job's driver and workers start, so each of the two nodes imports the copy Ray shipped."""
    cluster = multinode_cluster
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "nets.py").write_text((PROJECT_ROOT / "examples" / "features.py").read_text())
    proc = cluster.plateau("submit", "jobs/seed-reduce-lr.yaml", "--data", "sample", "--workers", "2",
                           "--epochs", "2", "--set", f"model={{build: '{folder / 'nets.py'}:build', "
                           "kwargs: {units: [16]}}", "--set", "training.engine=keras_jax",
                           "--set", "scaling.placement_strategy=STRICT_SPREAD", "--set", f"output={tmp_path}",
                           timeout=COMMAND_S)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    submission_id = _submission_id(proc)
    (folder / "nets.py").unlink()
    deadline = time.monotonic() + LONG_RUN_S
    while (status := cluster.job(submission_id)["status"]) not in ("SUCCEEDED", "FAILED", "STOPPED"):
        assert time.monotonic() < deadline, f"{submission_id} still {status}"
        time.sleep(2)
    assert status == "SUCCEEDED", cluster.plateau("logs", submission_id, timeout=COMMAND_S).stdout[-3000:]
    summary = json.loads((tmp_path / "seed-reduce-lr" / "summary.json").read_text())
    ids = cluster.node_ids()
    assert {p["node_id"] for p in summary["placement"]} == {ids["n1"], ids["n2"]}
    assert summary["epochs_run"] == 2 and summary["replicas_identical"] is True
    assert load_spec(tmp_path / "seed-reduce-lr" / "spec.yaml").model.build == "nets:build"


@contextlib.contextmanager
def _nodes_restored(cluster: LocalCluster):
    """Whatever a test adds or loses, the module's next test finds the nodes it started with."""
    before = set(cluster.nodes)
    try:
        yield
    finally:
        for name in [n for n in cluster.nodes if n not in before]:
            cluster.remove_node(cluster.nodes[name])
        for name in sorted(before - set(cluster.nodes)):
            cluster.add_node(name)


def _rank_nodes(line: str, cluster: LocalCluster) -> dict[int, str]:
    """rank -> node name, from a `workers: rank 0 on IP (node 1a2b3c4d, CPU), ...` line."""
    by_prefix = {node_id[:8]: name for name, node_id in cluster.node_ids().items()}
    return {int(rank): by_prefix[prefix] for rank, prefix in re.findall(r"rank (\d+) on \S+ \(node (\w+),", line)}


@pytest.mark.heavy
@pytest.mark.parametrize("engine", ENGINES)
def test_losing_the_node_of_rank_1_changes_nothing(multinode_cluster, tmp_path, engine):
    """Three worker nodes, max_failures 1: the node of rank 1 (its raylet and everything on it)
    is lost after epoch 2; the run finishes on the other nodes with the history, decisions and
    LR schedule of a run that lost nothing (bit-identical on CPU). keras_jax: the survivor's JAX
    runtime is not reused, the new group joins anew in fresh processes."""
    cluster = multinode_cluster
    with _nodes_restored(cluster):
        cluster.add_node("n3")
        overrides = ("--set", "scaling.max_failures=1", "--set", "checkpoint.keep=null",
                     "--set", f"training.engine={engine}",
                     "--set", "reduce_lr={monitor: val_loss, factor: 0.5, patience: 1, min_delta: 0.01}",
                     "--set", "early_stopping={monitor: val_accuracy, patience: 3, min_delta: 0.001}")
        undisturbed = train.run(make_spec(tmp_path / "alone", "training.epochs=5", *overrides[1::2], name="loss"),
                                echo=lambda line: None)
        assert undisturbed.ok, undisturbed.error

        out = tmp_path / "cluster"
        proc = cluster.plateau("submit", SPEC, "--data", "sample", "--epochs", "5", "--name", "loss",
                               "--set", "data.validation=holdout", "--set", "training.batch_size=100",
                               *overrides, "--set", f"output={out}")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        # On one machine the nodes share a disk; on a real cluster this path would be one node's.
        assert f"warning: checkpoints go to {out}/loss/checkpoints, a path on one node's disk, and the cluster " \
               "has 4 nodes" in proc.stderr
        submission_id = _submission_id(proc)
        lost = ""
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not lost:
            logs = cluster.plateau("logs", submission_id, timeout=COMMAND_S).stdout
            placed = re.search(r"^workers: .*$", logs, re.M)
            if placed and re.search(r"^epoch\s+2/5\b", logs, re.M):
                lost = _rank_nodes(placed.group(0), cluster)[1]
                cluster.remove_node(cluster.nodes[lost])
            else:
                time.sleep(1)
        assert lost, "the run never got past epoch 2"
        finish = cluster.plateau("logs", submission_id, "--follow", timeout=LONG_RUN_S)
        assert cluster.job(submission_id)["status"] == "SUCCEEDED", finish.stdout[-3000:]

        placements = re.findall(r"^workers: .*$", finish.stdout, re.M)
        assert len(placements) >= 2, "the worker group was not restarted"
        assert lost not in _rank_nodes(placements[-1], cluster).values()
        run = out / "loss"
        assert without_seconds(run_files.read_history(run / "history.csv")) == without_seconds(undisturbed.history)
        assert run_files.read_decisions(run / "decisions.jsonl") == undisturbed.decisions
        summary = json.loads((run / "summary.json").read_text())
        assert summary["test_accuracy"] == undisturbed.summary["test_accuracy"]
        assert summary["lr_reductions"] == undisturbed.summary["lr_reductions"]


@pytest.mark.heavy
def test_a_study_across_nodes_lands_where_its_driver_runs(multinode_cluster):
    """A compare job with 2 trials at a time on four 1-CPU nodes: the trials train on several
    nodes, each on that node's own disk, and the study's files (comparison.*, every trial's
    history and decisions) are written by the job's driver on the head, from what Tune returns."""
    cluster = multinode_cluster
    extra = cluster.add_nodes(["t1", "t2"])
    try:
        proc = cluster.plateau("submit", "jobs/seed-comparison.yaml", "--data", "sample", "--workers", "1",
                               "--epochs", "2", "--set", "seeds=[7]", "--set", "max_concurrent_trials=2",
                               "--wait", timeout=LONG_RUN_S)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    finally:
        for node in extra:
            cluster.remove_node(node)
    head = cluster.head
    studies = list(head.session_dir.glob("runtime_resources/**/results/seed-comparison/comparison.csv"))
    assert len(studies) == 1, "the study's files are not in the driver's (the head's) working dir"
    study = studies[0].parent
    rows = list(csv.DictReader(studies[0].open()))
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert (study / "comparison.md").is_file() and (study / "comparison.png").is_file()
    nodes_used = set()
    for row in rows:
        folder = study / "trials" / row["trial"]
        history = run_files.read_history(folder / "history.csv")
        assert len(history) == int(row["epochs_run"]) == 2
        assert {d["rank"] for d in run_files.read_decisions(folder / "decisions.jsonl")} == {0}
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["test_accuracy"] == float(row["test_accuracy"])
        nodes_used |= {p["node_id"] for p in summary["placement"]}
        # The trial's own run folder is on the node that trained it, not on the head.
        own = [n for n in [*cluster.nodes.values(), *cluster.removed]
               if list(n.root.glob(f"ray/session_*/**/plateau-run/{row['trial']}/history.csv"))]
        assert own and head not in own, row["trial"]
        # Its TensorBoard events too are written by the driver, never on the trial's node.
        assert list((folder / "tensorboard").glob("events.out.tfevents.*")), row["trial"]
        assert not [n for n in own if list(n.root.glob(f"ray/session_*/**/plateau-run/{row['trial']}/tensorboard"))]
    assert len(nodes_used) >= 2, "every trial trained on the same node"


# scaling.resize_interval_s stays at its default: the test holds the default to its promise.
ELASTIC = ("--set", "scaling.num_workers=[1, 2]", "--set", "scaling.max_failures=2",
           "--set", "data.validation=holdout",
           # A pause after every epoch's report: the node is lost, and found again, between epochs.
           "--set", "debug.epoch_pause_s=4", "--set", "checkpoint.keep=null",
           "--set", "reduce_lr={monitor: val_loss, factor: 0.5, patience: 1, min_delta: 0.005}",
           "--set", "early_stopping={monitor: val_accuracy, patience: 8, min_delta: 0.002}")


# Detached actors of Ray Train 2.60's own that may outlive a run's driver, holding no CPU: ray.data's
# autoscaling coordinator, one per cluster, made by the first run and serving every later one; and
# a run's PlacementGroupCleaner, which outlives the controller on purpose (to remove its placement
# group) and exits once it has seen the controller dead, which can take minutes after a SIGTERM'd
# driver (seen on this test cluster).
RAY_HOUSEKEEPING = {"_AutoscalingCoordinatorActor", "PlacementGroupCleaner"}


def _wait_for_checkpoint(checkpoints_dir: Path, epoch: int, timeout: float = 60) -> None:
    """Until Ray Train has registered the checkpoint of `epoch` (its latest)."""
    from service.checkpoints import resume

    deadline = time.monotonic() + timeout
    while (resume.latest(checkpoints_dir)[0] or 0) < epoch:
        assert time.monotonic() < deadline, f"no checkpoint of epoch {epoch} after {timeout}s"
        time.sleep(0.2)


@pytest.mark.heavy
@pytest.mark.parametrize("engine", ENGINES)
def test_an_elastic_run_loses_and_regains_a_worker_and_decides_as_if_nothing_happened(multinode_cluster, tmp_path,
                                                                                       engine):
    """num_workers [1, 2] on two 1-CPU nodes: the node of rank 1 is lost after epoch 2 and back
    after epoch 4. The run goes on at 1 worker, grows back to 2, and its learning rates, waits and
    stop are what stock Keras decides on the run's own global metrics in one uninterrupted fit.

    When it grows back is Ray Train's call: it looks for room every `scaling.resize_interval_s`
    (left at its default here), then restarts the worker group from the last checkpoint; the
    first epoch at 2 workers again must end within a minute of the node's return."""
    cluster = multinode_cluster
    argv = [sys.executable, "-m", "service.cli", "train", SPEC, "--data", "sample", "--epochs", "16", "--name", "elastic",
            "--address", cluster.gcs_address, "--output", str(tmp_path), *ELASTIC,
            "--set", f"training.engine={engine}"]
    driver = subprocess.Popen(argv, cwd=PROJECT_ROOT, env=cluster.driver_env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    lines, lost, lost_id = [], None, ""
    returned_at, regrown_after = None, None   # the node's return; seconds until an epoch at 2 workers
    storage = RunPaths.of(load_spec(SPEC, [f"output={tmp_path}", "name=elastic"])).checkpoints_dir
    try:
        for line in driver.stdout:
            lines.append(line.rstrip("\n"))
            if returned_at is not None and regrown_after is None and re.match(r"epoch +\d+/.* workers 1 -> 2", line):
                regrown_after = time.monotonic() - returned_at
            if re.match(r"epoch +2/", line) and lost is None:
                placed = [ln for ln in lines if ln.startswith("workers: ")][-1]
                lost = _rank_nodes(placed, cluster)[1]
                lost_id = cluster.nodes[lost].node_id
                _wait_for_checkpoint(storage, 2)   # lost after epoch 2, not during it
                cluster.remove_node(cluster.nodes[lost])
            elif re.match(r"epoch +4/", line) and lost is not None and lost not in cluster.nodes:
                cluster.add_node(lost)   # returns once the GCS has it ALIVE
                returned_at = time.monotonic()
        assert driver.wait(timeout=LONG_RUN_S) == 0, "\n".join(lines[-40:])
    finally:
        if driver.poll() is None:
            driver.kill()
        if lost is not None and lost not in cluster.nodes:
            cluster.add_node(lost)   # as the module found it
    run = tmp_path / "elastic"
    # The cluster's message is plateau's one line on the terminal, Ray's own text in ray.log.
    assert f"node {lost_id[:8]} lost (missed heartbeats)" in lines, "\n".join(lines)
    assert not [ln for ln in lines if "marked dead" in ln or "\x1b" in ln or ln.startswith("(")], "\n".join(lines)
    assert f"node id: {lost_id}" in (run / "ray.log").read_text()
    history = run_files.read_history(run / "history.csv")
    sizes = [row["workers"] for row in history]
    back = sizes.index(2, 2) + 1 if 2 in sizes[2:] else None   # the first epoch at 2 workers again
    assert sizes[:4] == [2, 2, 1, 1] and back and set(sizes[2:back - 1]) == {1} and set(sizes[back - 1:]) == {2}, (
        sizes, "\n".join(lines))
    print(f"\nworkers per epoch: {sizes}; the first epoch at 2 workers again ended {regrown_after:.1f} s "
          f"after the node returned")
    assert regrown_after < REGROWN_WITHIN_S, "\n".join(lines)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resizes"] == [{"epoch": 3, "from": 2, "to": 1}, {"epoch": back, "from": 1, "to": 2}]
    assert any(re.match(r"epoch +3/16 .* workers 2 -> 1", ln) for ln in lines)
    assert any(re.match(rf"epoch +{back}/16 .* workers 1 -> 2", ln) for ln in lines)

    decisions = run_files.read_decisions(run / "decisions.jsonl")
    for epoch, rows in by_epoch(decisions).items():   # every rank of each epoch's group reported, and agreed
        assert sorted(r["rank"] for r in rows) == list(range(rows[0]["world_size"]))
        assert rows[0]["world_size"] == sizes[epoch - 1]
        assert all({**r, "rank": 0} == {**rows[0], "rank": 0} for r in rows)
    rank0 = [d for d in decisions if d["rank"] == 0]
    spec = load_spec(run / "spec.yaml")
    stock, _ = stock_trace_on(engine, spec, [d["values"] for d in rank0])
    # The decisions of one uninterrupted stock fit, epoch by epoch: no counter was ever reset,
    # no reduction forgotten, and the stop (if any) at the same epoch.
    ours = [{"epoch": d["epoch"], "lr": d["lr_after"], "stop": d["stop"], "plateau_wait": d["plateau_wait"],
             "stopping_wait": d["stopping_wait"]} for d in rank0]
    assert ours == stock
    lrs = [d["lr_after"] for d in rank0]
    assert lrs == sorted(lrs, reverse=True), "the learning rate went back up"
    assert summary["lr_reductions"], "no LR reduction: the test proves less than it claims; retune ELASTIC"


@pytest.mark.heavy
def test_sigterm_to_a_driver_on_the_cluster_ends_its_actors_and_the_same_command_resumes(multinode_cluster,
                                                                                           tmp_path):
    """`plateau train --address` (a driver joined to the cluster, as from a login node) gets
    SIGTERM mid-run: exit 143 within 15 s with one line; the cluster keeps none of the run's
    actors (Ray's state API: its controller, workers and queue are all DEAD) and none of its
    placement groups; the same command resumes from the last checkpoint.

    Last in this module: Ray Train keeps an aborted run's resource request with its autoscaling
    coordinator (a detached actor, one per cluster) for 180 s, and an elastic run started within
    that time waits for it (docs/troubleshooting.md)."""
    from service.signals import EXIT_SIGTERM

    cluster = multinode_cluster
    argv = [sys.executable, "-m", "service.cli", "train", SPEC, "--data", "sample", "--epochs", "5", "--name", "term",
            "--address", cluster.gcs_address, "--output", str(tmp_path)]
    driver = subprocess.Popen(argv, cwd=PROJECT_ROOT, env=cluster.driver_env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        for line in driver.stdout:
            if re.match(r"epoch +2/", line):
                break
        jobs = {a["job_id"] for a in cluster.state("actors")
                if a["class_name"] == "RayTrainWorker" and a["state"] == "ALIVE"}
        assert len(jobs) == 1, jobs   # the driver's own Ray job
        sent = time.monotonic()
        driver.send_signal(signal.SIGTERM)
        _, stderr = driver.communicate(timeout=COMMAND_S)
        seconds = time.monotonic() - sent
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == EXIT_SIGTERM, stderr
    assert seconds < SIGNAL_EXIT_WITHIN_S, seconds
    assert re.fullmatch(r"plateau: interrupted by SIGTERM after epoch (2|3); the checkpoint of epoch [1-3] is in "
                        r".*/term/checkpoints/term: run the same command again to resume",
                        stderr.splitlines()[-1]), stderr
    deadline = time.monotonic() + 30   # the GCS marks a gone driver's actors DEAD within seconds
    while True:
        left = [(a["class_name"], a["state"]) for a in cluster.state("actors")
                if a["job_id"] in jobs and a["state"] != "DEAD" and a["class_name"] not in RAY_HOUSEKEEPING]
        groups = [(g["placement_group_id"], g["state"]) for g in cluster.state("placement_groups")
                  if g["creator_job_id"] in jobs and g["state"] != "REMOVED"]
        if not (left or groups) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert not left, left
    assert not groups, groups   # the workers' CPUs are free again

    again = subprocess.run(argv, cwd=PROJECT_ROOT, env=cluster.driver_env, capture_output=True, text=True,
                           timeout=LONG_RUN_S)
    assert again.returncode == 0, again.stdout + again.stderr
    assert re.search(r"^term: resuming after epoch [1-3] from its last checkpoint", again.stdout, re.M), again.stdout
    history = run_files.read_history(tmp_path / "term" / "history.csv")
    assert [r["epoch"] for r in history] == [1, 2, 3, 4, 5]
