"""What a user sees of a finished job through `plateau status | logs | jobs`, against a real job server.

Example::

    assert_job_views(ray_head, job_id, epochs=2)
"""

from __future__ import annotations

import json
import re


def assert_job_views(server, job_id: str, epochs: int) -> None:
    """status, logs, jobs and their --json forms all show the succeeded seed-reduce-lr job."""
    status = server.plateau("status", job_id)
    assert status.returncode == 0
    assert re.search(r"^status:\s+SUCCEEDED", status.stdout, re.M)
    assert "seed-reduce-lr (train, jobs/seed-reduce-lr.yaml)" in status.stdout

    logs = server.plateau("logs", job_id)
    assert logs.returncode == 0
    for epoch in range(1, epochs + 1):
        assert re.search(rf"^epoch\s+{epoch}/{epochs}\b", logs.stdout, re.M), logs.stdout[-3000:]

    listing = server.plateau("jobs")
    row = next(ln for ln in listing.stdout.splitlines() if ln.startswith(job_id))
    assert "seed-reduce-lr" in row and "SUCCEEDED" in row

    as_json = json.loads(server.plateau("status", job_id, "--json").stdout)
    assert (as_json["job_id"], as_json["status"], as_json["metadata"]["spec"]) == (job_id, "SUCCEEDED", "seed-reduce-lr")
    assert as_json["duration_s"] > 0 and as_json["started"] and as_json["ended"]
    listed = {j["job_id"]: j for j in json.loads(server.plateau("jobs", "--json").stdout)}
    assert listed[job_id]["status"] == "SUCCEEDED"
