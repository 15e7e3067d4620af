"""`plateau submit | status | logs | stop | jobs` against a real Ray head (no mocks).

The head (the `ray_head` fixture, tests/support/fixtures.py) is started once per module with token
auth on, in a temporary HOME and temp dir. Commands run as subprocesses, exactly as a user types them.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
import time

import pytest

from tests.support.cluster import LocalCluster, free_port
from tests.support.fixtures import HEAD_CPUS
from tests.support.jobs import assert_job_views
from tests.support.limits import COMMAND_S, PROGRAM_S, REFUSED_WITHIN_S, RUN_S
from tests.support.project import PROJECT_ROOT

SPEC = "jobs/seed-reduce-lr.yaml"
JOB_ID = re.compile(r"^plateau-seed-reduce-lr-\d{8}-\d{6}(-\d+)?$")


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    # `warning: ...` lines (e.g. the spec's legacy `epsilon`) are for users, not errors.
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("warning: ")]
    assert len(lines) == 1, f"expected one stderr line, got:\n{proc.stderr}"
    assert lines[0].startswith("plateau: ")
    assert "Traceback" not in proc.stderr
    return lines[0]


def _job_id(proc: subprocess.CompletedProcess) -> str:
    first = proc.stdout.splitlines()[0].strip()
    assert JOB_ID.match(first), proc.stdout
    return first


def _job_ids(head) -> set[str]:
    proc = head.plateau("jobs", timeout=COMMAND_S)
    assert proc.returncode == 0, proc.stderr
    return {line.split()[0] for line in proc.stdout.splitlines()[1:] if line.startswith("plateau-")}


def _wait_status(head, job_id: str, wanted: set[str], timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    status = ""
    while time.monotonic() < deadline:
        proc = head.plateau("status", job_id, timeout=COMMAND_S)
        match = re.search(r"^status:\s+(\w+)", proc.stdout, re.M)
        status = match.group(1) if match else ""
        if status in wanted:
            return status
        time.sleep(1)
    raise AssertionError(f"{job_id} still {status!r} after {timeout}s, wanted {wanted}")


# --- (e) addresses: no head needed ------------------------------------------------------------


def _plateau(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "service.cli", *args], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=COMMAND_S)


def test_unreachable_address_is_one_line_exit_2():
    start = time.monotonic()
    url = f"http://127.0.0.1:{free_port()}"
    proc = _plateau("submit", SPEC, "--address", url, "--wait", "--wait-server", "3")
    assert proc.returncode == 2
    waited = [ln for ln in proc.stderr.splitlines() if ln.startswith("waiting for the job server at ")]
    assert waited == [f"waiting for the job server at {url}: it refuses connections (0s of --wait-server 3s)"]
    rest = proc.stderr.replace(waited[0] + "\n", "")
    line = _one_error_line(subprocess.CompletedProcess(proc.args, 2, proc.stdout, rest))
    assert line.startswith(f"plateau: cannot reach a job server at {url}: it refused connections for 3s; is the "
                           f"cluster up? pass the dashboard address")
    assert proc.stdout == ""
    assert time.monotonic() - start < REFUSED_WITHIN_S
    status = _plateau("status", "plateau-x", "--address", url)  # only submit waits
    assert status.returncode == 2 and "cannot reach a job server at" in _one_error_line(status)


# --- waiting for a starting job server: the policy on a fake clock ------------------------------


class FakeClock:
    """time.monotonic and time.sleep of a test: sleeping moves the time on, nothing waits."""

    def __init__(self):
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


URL = "http://10.0.0.1:8265"
# What Ray's client raises for the job server's HTTP 500 answer.
NO_AGENT = RuntimeError("Request failed with status code 500: No available agent to submit job, please try again "
                        "later..")


def _waiting(limit_s: float = 60):
    from service import jobs

    clock, said = FakeClock(), []
    return jobs.ServerWait(limit_s, clock=clock, sleep=clock.sleep, say=said.append), clock, said


def test_a_server_without_a_job_agent_is_retried_with_backoff_and_a_line_every_10s():
    wait, clock, said = _waiting()
    tries = []

    def submit_job():
        tries.append(clock.now)
        if len(tries) <= 6:
            clock.now += 3  # the job server looks for an agent before it answers
            raise NO_AGENT
        return "plateau-seed-1"

    assert wait.call(submit_job, URL) == "plateau-seed-1"
    assert clock.slept == [1, 2, 4, 5, 5, 5]
    assert tries == [0, 4, 9, 16, 24, 32, 40]
    assert said == [f"waiting for the job server at {URL}: it has no job agent yet ({s}s of --wait-server 60s)"
                    for s in (3, 19, 35)]


def test_a_server_that_never_gets_an_agent_is_one_line_after_the_bound():
    from service import jobs

    wait, clock, said = _waiting(limit_s=20)

    def submit_job():
        clock.now += 3
        raise NO_AGENT

    with pytest.raises(jobs.JobError) as refused:
        wait.call(submit_job, URL)
    assert str(refused.value) == (
        f"the job server at {URL} still had no job agent after 23s (No available agent to submit job); the head "
        f"is starting or its agent is down: submit again later, or wait longer with --wait-server SECONDS")
    # tries at 0, 4, 9, 16 and 20 (the last sleep only up to the bound), each answered 3 s later
    assert clock.slept == [1, 2, 4, 1] and clock.now == 23
    assert [line.split("(")[1] for line in said] == ["3s of --wait-server 20s)", "19s of --wait-server 20s)"]


def test_refused_connections_are_retried_for_the_first_15s_only():
    """A real refused connection (nothing listens on the port), through Ray's client."""
    from service import jobs

    wait, clock, said = _waiting(limit_s=60)
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(jobs.JobError) as refused:
        jobs.JobServer.connect(url, wait=wait)
    assert str(refused.value).startswith(f"cannot reach a job server at {url}: it refused connections for 15s; is "
                                         f"the cluster up?")
    assert clock.slept == [1, 2, 4, 5, 3] and said[0] == \
        f"waiting for the job server at {url}: it refuses connections (0s of --wait-server 60s)"
    assert len(said) == 2  # at 0s and 12s
    none, clock, said = _waiting(limit_s=0)
    with pytest.raises(jobs.JobError, match=r"refused connections for 0s"):
        jobs.JobServer.connect(url, wait=none)
    assert clock.slept == [] and said == []


def test_other_errors_are_not_waited_for():
    from service import jobs

    wait, clock, said = _waiting()
    for error in (RuntimeError("Request failed with status code 400: bad runtime_env."),
                  TimeoutError("timed out"), ConnectionError("Failed to connect to Ray at address: x.")):
        def fails(error=error):
            raise error

        with pytest.raises(type(error)):
            wait.call(fails, URL)
    assert clock.slept == [] and said == []
    assert jobs.starting_reason(NO_AGENT) == "has no job agent yet"
    assert jobs.starting_reason(ConnectionRefusedError(111, "Connection refused")) == "refuses connections"


def test_ray_client_address_is_refused_with_the_dashboard_hint():
    proc = _plateau("jobs", "--address", "ray://127.0.0.1:10001")
    assert proc.returncode == 2
    line = _one_error_line(proc)
    assert "Ray Client address" in line and "http://127.0.0.1:8265" in line


def test_address_without_scheme_is_refused():
    proc = _plateau("status", "plateau-x", "--address", "127.0.0.1:6379")
    assert proc.returncode == 2
    assert "http://127.0.0.1:8265" in _one_error_line(proc)


# --- against a real head ------------------------------------------------------------------------


def test_a_job_as_json():
    from ray.job_submission import JobDetails, JobStatus, JobType

    from service import jobs

    details = JobDetails(type=JobType.SUBMISSION, submission_id="plateau-x-1", status=JobStatus.SUCCEEDED,
                         entrypoint="python -m service.cli run x.yaml", start_time=1_000_000, end_time=1_090_500,
                         metadata={"spec": "x"}, message="done", driver_exit_code=0)
    data = jobs.job_json(details)
    assert {k: v for k, v in data.items() if k not in ("started", "ended")} == {
        "job_id": "plateau-x-1", "status": "SUCCEEDED", "metadata": {"spec": "x"},
        "entrypoint": "python -m service.cli run x.yaml", "duration_s": 90.5, "message": "done",
        "driver_exit_code": 0}
    assert data["started"].startswith("1970-01-01T") and data["ended"].startswith("1970-01-01T")


@pytest.mark.slow
def test_bad_spec_is_refused_before_submission(ray_head):
    before = _job_ids(ray_head)
    # A batch of 200 cannot be split over 201 workers: load_spec refuses it locally.
    proc = ray_head.plateau("submit", SPEC, "--workers", "201", "--wait")
    assert proc.returncode == 2
    assert "batch_size" in _one_error_line(proc)
    missing = ray_head.plateau("submit", "jobs/no-such-spec.yaml")
    assert missing.returncode == 2
    assert "not found" in _one_error_line(missing)
    assert _job_ids(ray_head) == before


@pytest.mark.slow
def test_submit_right_after_the_head_starts_waits_for_its_job_server(tmp_path):
    """`ray start --head` launched, and at once `plateau submit`: it waits through the head's
    start (refused connections, then a job server without an agent) and submits."""
    head = LocalCluster(head_cpus=HEAD_CPUS)
    try:
        head.start(wait=False)
        proc = head.plateau("submit", SPEC, "--data", "sample", "--workers", "1", "--epochs", "1",
                            "--set", f"output={tmp_path}", "--wait-server", "120", timeout=PROGRAM_S)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        job_id = _job_id(proc)
        waited = [ln for ln in proc.stderr.splitlines() if ln.startswith("waiting for the job server at ")]
        assert waited, proc.stderr  # the head was still starting when submit first asked
        for line in waited:
            assert re.fullmatch(rf"waiting for the job server at {re.escape(head.address)}: it (refuses connections|"
                                rf"has no job agent yet) \(\d+s of --wait-server 120s\)", line), line
        assert "Traceback" not in proc.stderr
        assert _wait_status(head, job_id, {"SUCCEEDED", "FAILED", "STOPPED"}, timeout=PROGRAM_S) == "SUCCEEDED"
        summary = json.loads((tmp_path / "seed-reduce-lr" / "summary.json").read_text())
        assert (summary["epochs_run"], summary["workers"]) == (1, 1)
    finally:
        head.shutdown()


@pytest.mark.slow
def test_unknown_job_id_and_wrong_token_are_one_line_exit_2(ray_head):
    for command in ("status", "logs", "stop"):
        proc = ray_head.plateau(command, "plateau-does-not-exist-20000101-000000")
        assert proc.returncode == 2, proc
        assert "no job 'plateau-does-not-exist" in _one_error_line(proc)
    wrong = dict(ray_head.env, RAY_AUTH_TOKEN="not-the-token")
    proc = ray_head.plateau("jobs", env=wrong)
    assert proc.returncode == 2
    line = _one_error_line(proc)
    assert "refused the token" in line and "RAY_AUTH_TOKEN" in line


@pytest.mark.heavy  # the same submission, and its views, run on the multi-node cluster by default
def test_submit_wait_succeeds_and_writes_the_summary(ray_head, tmp_path):
    out = tmp_path / "results"
    proc = ray_head.plateau("submit", SPEC, "--data", "sample", "--workers", "2", "--epochs", "2",
                            "--set", f"output={out}", "--wait", timeout=RUN_S)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    job_id = _job_id(proc)
    assert f"{job_id}: SUCCEEDED" in proc.stdout
    summary = json.loads((out / "seed-reduce-lr" / "summary.json").read_text())
    assert (summary["name"], summary["workers"], summary["epochs_run"], summary["data"]["source"]) == \
        ("seed-reduce-lr", 2, 2, "sample")
    assert_job_views(ray_head, job_id, epochs=2)


@pytest.mark.slow
@pytest.mark.quick  # the default run's study and its submit to a real head, in one job
def test_a_submitted_study_trains_every_trial_and_writes_its_tables(ray_head, tmp_path):
    """`plateau submit` of the seed's study (2 settings x 1 seed, 1 epoch each): the job succeeds,
    Tune trained both trials on the head, and the job's driver wrote the study's tables from them."""
    proc = ray_head.plateau("submit", "jobs/seed-comparison.yaml", "--data", "sample", "--workers", "1",
                            "--epochs", "1", "--set", "seeds=[7]", "--output", str(tmp_path), "--wait",
                            timeout=RUN_S)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    job_id = proc.stdout.splitlines()[0].strip()
    assert re.fullmatch(r"plateau-seed-comparison-\d{8}-\d{6}(-\d+)?", job_id), proc.stdout
    assert f"{job_id}: SUCCEEDED" in proc.stdout
    study = tmp_path / "seed-comparison"
    rows = list(csv.DictReader((study / "comparison.csv").open()))
    assert [(r["reduce_lr"], r["seed"], r["status"], r["epochs_run"]) for r in rows] == [
        ("off", "7", "ok", "1"), ("on", "7", "ok", "1")]
    for row in rows:
        summary = json.loads((study / "trials" / row["trial"] / "summary.json").read_text())
        assert (summary["workers"], summary["epochs_run"]) == (1, 1)
        assert summary["test_accuracy"] == float(row["test_accuracy"])
    settings = list(csv.DictReader((study / "settings.csv").open()))
    assert [(s["setting"], s["n_seeds"]) for s in settings] == [(r["setting"], "1") for r in rows]
    assert (study / "comparison.png").read_bytes().startswith(b"\x89PNG")
    logs = ray_head.plateau("logs", job_id)
    finished = [ln for ln in logs.stdout.splitlines() if re.match(r"\[\d/2\] .*test_accuracy", ln)]
    assert len(finished) == 2, logs.stdout[-3000:]
    status = ray_head.plateau("status", job_id)
    assert "seed-comparison (compare, jobs/seed-comparison.yaml)" in status.stdout, status.stdout


@pytest.mark.slow
def test_stop_a_running_job(ray_head, tmp_path):
    proc = ray_head.plateau("submit", SPEC, "--data", "sample", "--workers", "2", "--epochs", "30",
                            "--set", f"output={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    job_id = _job_id(proc)
    _wait_status(ray_head, job_id, {"RUNNING"})

    stopped = ray_head.plateau("stop", job_id, timeout=COMMAND_S)
    assert stopped.returncode == 0, stopped.stderr
    assert f"{job_id}: STOPPED" in stopped.stdout

    status = ray_head.plateau("status", job_id)
    assert status.returncode == 1  # a stopped job did not succeed
    assert re.search(r"^status:\s+STOPPED", status.stdout, re.M)
    again = ray_head.plateau("stop", job_id)
    assert again.returncode == 0 and "already STOPPED" in again.stdout
    follow = ray_head.plateau("logs", job_id, "--follow", timeout=COMMAND_S)
    assert follow.returncode == 1
    assert f"job {job_id} STOPPED" in follow.stderr


@pytest.mark.slow
def test_a_job_that_fails_on_the_cluster_reports_failed(ray_head, tmp_path):
    # Passes the local checks (the path may exist on the cluster), fails when the job reads it.
    proc = ray_head.plateau("submit", SPEC, "--data", "no-such-dir/missing-mnist.npz", "--workers", "2",
                            "--epochs", "1", "--set", f"output={tmp_path}", "--fresh", "--follow", timeout=PROGRAM_S)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    job_id = _job_id(proc)
    line = _one_error_line(proc)
    assert f"job {job_id} FAILED" in line and "missing-mnist.npz" in line

    status = ray_head.plateau("status", job_id)
    assert status.returncode == 1
    assert re.search(r"^status:\s+FAILED", status.stdout, re.M)
    error = re.search(r"^error:\s+(.*)$", status.stdout, re.M)
    assert error and "missing-mnist.npz" in error.group(1), status.stdout
    entrypoint = re.search(r"^entrypoint:\s+(.*)$", status.stdout, re.M)
    assert entrypoint and entrypoint.group(1).endswith(" --fresh"), status.stdout  # submit --fresh reached the job
