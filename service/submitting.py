"""What `plateau submit` checks before it talks to a job server, without Ray: the job server's
address and example buckets. `plateau check` runs the same checks (so both print the same line),
which is why they live here and not in `service.jobs`, which imports Ray's job client.

Example::

    check_job_server_address("10.0.0.5:6379")   # JobError: ... did you mean --address http://10.0.0.5:8265?
    refuse_placeholder_buckets(load_spec("jobs/cluster-seed-reduce-lr.yaml"))   # JobError: ... YOUR-BUCKET ...
"""

from __future__ import annotations

import re
from urllib.parse import urlparse

from service.errors import BadInput
from service.spec import CompareSpec, Spec, TrainSpec
from service.storage import placeholder_bucket

ADDRESS_HINT = ("pass the dashboard address, --address http://HEAD:8265 (for a cluster.yaml "
                "cluster: run `ray dashboard cluster.yaml`, then use http://127.0.0.1:8265)")


class JobError(BadInput):
    """Bad input found before or while talking to the job server (exit 2), as one line."""


def _suggest(address: str) -> str:
    """`ray://h:10001`, `h:6379`, `h` -> `http://h:8265`; `h:8265` -> `http://h:8265`."""
    hostport = address.split("://", 1)[-1].split("/", 1)[0]
    host, _, port = hostport.rpartition(":") if ":" in hostport else (hostport, "", "")
    if not host or host == "auto":
        return ""
    port = port if port and port not in ("6379", "10001") else "8265"
    return f"; did you mean --address http://{host}:{port}?"


def check_job_server_address(address: str | None) -> str:
    """The job server's URL (http://HOST:8265), or a JobError saying what to pass instead."""
    if not address or not address.strip():
        raise JobError(f"no cluster address; {ADDRESS_HINT} or set RAY_API_SERVER_ADDRESS")
    address = address.strip()
    if address.startswith("ray://"):
        raise JobError(f"{address} is a Ray Client address, but jobs go to the dashboard's job server; "
                       f"{ADDRESS_HINT}{_suggest(address)}")
    if not re.match(r"^https?://", address):
        raise JobError(f"{address!r} is not a job server address; {ADDRESS_HINT}{_suggest(address)}")
    parsed = urlparse(address)
    try:
        parsed.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise JobError(f"{address!r} has a bad port; {ADDRESS_HINT}") from None
    if not parsed.hostname:
        raise JobError(f"{address!r} names no host; {ADDRESS_HINT}")
    return address.rstrip("/")


def storage_of(spec: Spec) -> tuple[str, TrainSpec]:
    """(what `output` the spec names, the train spec whose workers write checkpoints)."""
    return spec.output, (spec.base if isinstance(spec, CompareSpec) else spec)


def refuse_placeholder_buckets(spec: Spec) -> None:
    """The cluster specs ship `s3://YOUR-BUCKET/...`: refuse it before anything starts, not when
    the first checkpoint is written, after the GPU nodes booted."""
    output, train_spec = storage_of(spec)
    fields = {"output": output, "scaling.storage_path": train_spec.scaling.storage_path or ""}
    for field, value in fields.items():
        if value and placeholder_bucket(value):
            raise JobError(f"{field} {value} names an example bucket; put your own bucket there "
                           f"(e.g. --set {field}=s3://my-team-ml/plateau/...)")
