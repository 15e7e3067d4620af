"""What `plateau submit` checks before it talks to a job server, without Ray: the job server's
address, example buckets, the project folder it uploads and the model builder's code it carries.
`plateau check` runs the same checks (so both print the same line), which is why they live here
and not in `service.jobs`, which imports Ray's job client.

Example::

    check_job_server_address("10.0.0.5:6379")   # JobError: ... did you mean --address http://10.0.0.5:8265?
    refuse_placeholder_buckets(load_spec("jobs/cluster-seed-reduce-lr.yaml"))   # JobError: ... YOUR-BUCKET ...
    builder_code(load_spec("examples/cnn.yaml"), find_project_root("examples/cnn.yaml"))
    # ([], ['model.build=examples/cnn.py:build']): the file travels in the project folder
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

from service import usermodel
from service.errors import BadInput
from service.spec import BUILD_KEY, CompareSpec, Spec, TrainSpec
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


def find_project_root(spec_path: str | Path) -> Path:
    """The directory uploaded as the job's working dir (holds pyproject.toml and service/)."""
    spec = Path(spec_path).resolve()
    for start in (spec.parent, Path.cwd().resolve()):
        for directory in (start, *start.parents):
            if (directory / "pyproject.toml").is_file() and (directory / "service" / "cli.py").is_file():
                return directory
    raise JobError(
        f"no plateau project (pyproject.toml with service/) above {spec_path!r} or the current "
        "directory; run plateau submit from the project"
    )


def check_builders(specs: list[TrainSpec]) -> None:
    """Each distinct `model.build` of `specs`: its module or file, and the function in it (nothing imported)."""
    for build in dict.fromkeys(spec.model.build for spec in specs if spec.model.build):
        usermodel.check(usermodel.resolve(build, None))


def _inside(path: Path, root: Path) -> Optional[str]:
    """`path` relative to `root` (posix), or None when it lies outside."""
    try:
        return path.resolve().relative_to(root).as_posix()
    except ValueError:
        return None


def builder_code(spec: Spec, root: Path) -> tuple[list[str], list[str]]:
    """What a job needs to import the spec's builders on a cluster whose nodes never saw them:
    (`py_modules` for the job's runtime_env, `--set` overrides for its command line).

    Code inside the project folder travels with it (the job's working_dir); a file outside it
    travels in `py_modules` and is named by its module name on the cluster; a module of your own
    outside the project travels in `py_modules`; an installed one is expected on every node.
    The job's `model.build` is given as `--set`, with a file relative to the project folder,
    which is the job's current directory.
    """
    train_spec = spec.base if isinstance(spec, CompareSpec) else spec
    py_modules: list[str] = []
    overrides: list[str] = []
    grid = spec.grid if isinstance(spec, CompareSpec) else {}
    varied = [v for v in grid.get(BUILD_KEY, []) if isinstance(v, str)]
    varied += [v["build"] for v in grid.get("model", []) if isinstance(v, dict) and isinstance(v.get("build"), str)]
    for build in dict.fromkeys([*([train_spec.model.build] if train_spec.model.build else []), *varied]):
        ref = usermodel.resolve(build, None)
        code = usermodel.local_code(ref)
        inside = _inside(code, root) if code is not None else None
        if code is not None and inside is None:
            if build in varied and ref.file is not None:
                raise JobError(f"grid {BUILD_KEY}: {ref.file} is outside the project directory {root.name}/ that is "
                               f"uploaded as the job's working dir; move it into the project (e.g. examples/)")
            py_modules.append(str(code))
        if build == train_spec.model.build:
            portable = (f"{inside}:{ref.function}" if ref.file is not None and inside is not None
                        else f"{ref.import_name}:{ref.function}")
            overrides.append(f"{BUILD_KEY}={portable}")
    return list(dict.fromkeys(py_modules)), overrides
