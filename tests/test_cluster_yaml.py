"""cluster.yaml, checked offline: Ray's own schema, then what the schema cannot see.

Ray validates the launcher config with `prepare_config` (merge the provider's defaults) and
`validate_config` (JSON schema), but it does not look inside node_config, nor compare the
cluster with the jobs meant to run on it. So this also checks what makes the cluster boot and
train as written: the CPU head gets the CPU image and no CUDA, the GPU workers the GPU image
and TensorFlow's CUDA build; every node has an instance profile (workers write the s3://
checkpoints); AMI ids are pinned (no launch-time SSM lookup the head's role cannot make); every
node starts with token auth; every jobs/cluster-*.yaml spec loads and the worker types can
supply what it asks for. No Ray is started.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = ROOT / "cluster.yaml"
CLUSTER_SPECS = sorted((ROOT / "jobs").glob("cluster-*.yaml"))


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


@pytest.fixture(scope="module")
def config(raw) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(raw)
    validate_config(prepared)
    return prepared


def _worker_types(config: dict) -> dict:
    head = config["head_node_type"]
    return {name: t for name, t in config["available_node_types"].items() if name != head}


def test_ray_schema_accepts_the_cluster(config):
    assert config["provider"]["type"] == "aws"
    assert config["head_node_type"] in config["available_node_types"]


def test_head_is_cpu_only_with_explicit_resources(config):
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"].get("GPU") == 0, "the head must declare GPU: 0 so no GPU worker lands there"
    assert head["resources"].get("CPU", 0) >= 1
    assert head["max_workers"] == 0


def test_gpu_worker_type_autoscales_from_zero(config):
    gpu_types = {n: t for n, t in _worker_types(config).items() if t["resources"].get("GPU", 0) > 0}
    assert gpu_types, "no worker type offers GPUs"
    for name, node_type in gpu_types.items():
        for key in ("CPU", "GPU"):
            value = node_type["resources"][key]
            assert isinstance(value, int) and value > 0, f"{name}: resources.{key} must be an explicit integer"
        assert node_type["min_workers"] == 0, f"{name}: GPU nodes should start at 0 and scale on demand"
        assert node_type["max_workers"] >= 1
        assert node_type["node_config"].get("InstanceType")
    assert config["idle_timeout_minutes"] > 0
    assert config["max_workers"] >= max(t["max_workers"] for t in gpu_types.values())


def _docker(config: dict, node_type: str) -> dict:
    """The docker settings a node of this type runs with (the autoscaler's own merge)."""
    return {**config["docker"], **config["available_node_types"][node_type].get("docker", {})}


def _image(config: dict, node_type: str) -> str:
    docker = _docker(config, node_type)
    role = "head" if node_type == config["head_node_type"] else "worker"
    return docker.get(f"{role}_image") or docker["image"]


def _setup(config: dict, node_type: str) -> str:
    """The setup commands a node of this type runs (prepare_config already merged
    setup_commands into head_ and worker_setup_commands; a node type's own list replaces them)."""
    if node_type == config["head_node_type"]:
        return " ".join(config["head_setup_commands"])
    node = config["available_node_types"][node_type]
    return " ".join(node.get("worker_setup_commands", config["worker_setup_commands"]))


def _ray_image_tag(image: str) -> tuple[str, str, str]:
    """rayproject/ray:2.60.0-py311-gpu -> ("2.60.0", "py311", "gpu")."""
    match = re.match(r"^rayproject/ray:(\d+\.\d+\.\d+)-(py\d+)-(cpu|gpu|cu\d+)$", image)
    assert match, f"{image}: expected rayproject/ray:X.Y.Z-pyNN-(cpu|gpu|cuNNN)"
    return match.groups()


def test_images_match_this_ray_and_python(config):
    import ray

    major_minor = ".".join(ray.__version__.split(".")[:2])
    tags = {name: _ray_image_tag(_image(config, name)) for name in config["available_node_types"]}
    for name, (version, python, _) in tags.items():
        assert version.startswith(major_minor + "."), f"{name}: Ray {version}, this project pins {major_minor}"
    # Nodes of one cluster must run the same Ray and Python: pickled functions cross them.
    assert len({(v, p) for v, p, _ in tags.values()}) == 1, tags


def test_head_runs_the_cpu_image_without_cuda(config):
    head = config["head_node_type"]
    assert _ray_image_tag(_image(config, head))[2] == "cpu"
    setup = _setup(config, head)
    assert re.search(r"pip install .*-e /home/ray/plateau(\s|$)", setup), "the head must install the project"
    for cuda in ("and-cuda", "[gpu]", "nvidia-", "cuda"):
        assert cuda not in setup, f"the head runs only job drivers; no CUDA install ({cuda!r} in {setup!r})"


def test_gpu_workers_run_the_gpu_image_and_the_gpu_build(config):
    for name, node_type in _worker_types(config).items():
        if node_type["resources"].get("GPU", 0) == 0:
            continue
        assert _ray_image_tag(_image(config, name))[2] != "cpu", f"{name}: a GPU node needs Ray's GPU image"
        setup = _setup(config, name)
        assert re.search(r"pip install .*-e '?/home/ray/plateau\[gpu\]'?", setup), (
            f"{name}: install the project's gpu extra: {setup!r}")
    assert "." in config["file_mounts"].values(), "the project directory must be mounted"


def test_the_gpu_extra_is_tensorflows_cuda_build():
    # cluster.yaml's workers install `.[gpu]`; pyproject.toml must define it.
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"].get("optional-dependencies", {})
    assert "gpu" in extras, "pyproject.toml has no `gpu` extra, which cluster.yaml's GPU workers install"
    gpu = " ".join(extras["gpu"]).replace(" ", "")
    assert "tensorflow[and-cuda]==2.21" in gpu and "tf-keras==2.21" in gpu, extras["gpu"]


def test_every_node_has_its_own_instance_profile(config):
    profiles = {}
    for name, node_type in config["available_node_types"].items():
        profile = node_type["node_config"].get("IamInstanceProfile")
        assert isinstance(profile, dict) and (profile.get("Name") or profile.get("Arn")), (
            f"{name}: needs node_config.IamInstanceProfile (Name or Arn): workers get no role by "
            "default, and Ray's default head role may not pass one to them")
        profiles[name] = profile
    head = profiles.pop(config["head_node_type"])
    assert all(p != head for p in profiles.values()), "workers need S3 only, not the head's EC2 rights"


def _readme_policy(sid_text: str) -> dict:
    """The IAM policy in docs/cluster.md whose JSON block mentions `sid_text`."""
    import json

    blocks = re.findall(r"```json\n(.*?)```", (ROOT / "docs" / "cluster.md").read_text(), re.S)
    found = [json.loads(b) for b in blocks if sid_text in b]
    assert len(found) == 1, f"docs/cluster.md should hold one IAM policy mentioning {sid_text!r}"
    return found[0]


def test_image_ids_need_no_permission_the_launching_role_lacks(raw):
    """A pinned AMI id needs nothing; `resolve:ssm:` is resolved by EC2 with the launcher's
    credentials, and the head launches the workers with its role: the head's policy in the
    docs/cluster.md must grant ssm:GetParameters on that parameter."""
    head_policy = _readme_policy("ssm:GetParameters")
    granted = [r for st in head_policy["Statement"] if "ssm:GetParameters" in st["Action"]
               for r in ([st["Resource"]] if isinstance(st["Resource"], str) else st["Resource"])]
    for name, node_type in raw["available_node_types"].items():
        image_id = str(node_type["node_config"].get("ImageId", ""))
        if image_id.startswith("resolve:ssm:"):
            parameter = image_id.removeprefix("resolve:ssm:")
            assert any(re.fullmatch(r.split(":parameter", 1)[1].replace("*", ".*"), parameter) for r in granted), (
                f"{name}: the head's role may not read {parameter}")
        else:
            assert re.fullmatch(r"ami-[0-9a-f]{8}([0-9a-f]{9})?", image_id), f"{name}: ImageId {image_id!r}"


def test_every_node_starts_with_token_auth(raw):
    path = raw["file_mounts"]
    token_mounts = [remote for remote, local in path.items() if local == "~/.ray/auth_token"]
    assert len(token_mounts) == 1, "the launching machine's token must be copied to every node"
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = " ".join(raw[key])
        assert "RAY_AUTH_MODE=token" in start, f"{key}: a node without RAY_AUTH_MODE=token cannot join"
        assert f"RAY_AUTH_TOKEN_PATH={token_mounts[0]}" in start, key


def test_dashboard_is_not_opened_to_the_internet(raw):
    starts = " ".join(raw["head_start_ray_commands"])
    assert "--dashboard-host=0.0.0.0" not in starts
    assert "8265" not in yaml.safe_dump(raw["provider"])
    for node_type in raw["available_node_types"].values():
        node_config = node_type.get("node_config", {})
        assert "SecurityGroupIds" not in node_config, "keep the launcher's SSH-only security group"
        assert "8265" not in yaml.safe_dump(node_config)


def test_there_are_cluster_specs():
    assert CLUSTER_SPECS, "expected jobs/cluster-*.yaml seed specs for the cluster"


@pytest.mark.parametrize("spec_path", CLUSTER_SPECS, ids=lambda p: p.name)
def test_cluster_can_run_the_spec(spec_path, config):
    from service.spec import load_spec

    spec = load_spec(spec_path)
    scaling = spec.scaling
    workers = scaling.max_workers  # an elastic run grows to MAX when the cluster can
    gpus = scaling.gpus_per_worker if scaling.use_gpu else 0
    cpus = scaling.cpus_per_worker

    def per_node(resources: dict) -> int:
        """How many of the spec's workers one node of this type holds."""
        fits = math.floor(resources.get("CPU", 0) / cpus)
        if gpus:
            fits = min(fits, math.floor(resources.get("GPU", 0) / gpus))
        return fits

    capacity = {name: per_node(t["resources"]) for name, t in _worker_types(config).items()}
    usable = {name: n for name, n in capacity.items() if n > 0}
    if scaling.use_gpu:
        assert usable, f"{spec_path.name}: no worker type has {gpus} GPU(s) and {cpus} CPU(s) for one worker"
        total_gpus = sum(t["max_workers"] * t["resources"].get("GPU", 0) for t in _worker_types(config).values())
        assert total_gpus >= workers * gpus, (
            f"{spec_path.name}: {workers} workers x {gpus} GPU need {workers * gpus} GPUs; "
            f"the worker types reach {total_gpus}")
    most = sum(config["available_node_types"][n]["max_workers"] * k for n, k in usable.items())
    assert most >= workers, f"{spec_path.name}: the worker types hold at most {most} of {workers} workers"
    nodes_needed = min(math.ceil(workers / k) for k in usable.values())
    assert config["max_workers"] >= nodes_needed

    # Workers spread over nodes restart from checkpoints any node can read.
    if workers > max(usable.values()):
        assert scaling.storage_path and re.match(r"^[a-z][a-z0-9+.-]*://", scaling.storage_path), (
            f"{spec_path.name}: multi-node runs need scaling.storage_path on shared storage (s3://...)")
    assert spec.data.source == "mnist"


# ---------------------------------------------------------------------------------------------
# The extras a job needs (engine, tracking), installed on the head and the workers


def _extras(line: str) -> set[str]:
    """The project's extras a pip line installs: `-e '/home/ray/plateau[gpu,mlflow]'` -> {gpu, mlflow}."""
    match = re.search(r"-e '?/home/ray/plateau(?:\[([^\]]*)\])?'?(\s|$)", line)
    assert match, f"not an install of the project: {line!r}"
    return {e.strip() for e in (match.group(1) or "").split(",") if e.strip()}


def _documented_setup() -> dict[str, list[str]]:
    """The setup commands docs/cluster.md tells an operator to use for keras_jax and MLflow jobs."""
    text = (ROOT / "docs" / "cluster.md").read_text()
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", text, re.S) if "setup_commands" in b]
    assert len(blocks) == 1, "docs/cluster.md should show one block of setup commands"
    return blocks[0]


def test_every_extra_the_cluster_names_exists():
    import tomllib

    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    named = set()
    for line in CLUSTER_YAML.read_text().splitlines() + [c for cmds in _documented_setup().values() for c in cmds]:
        for group in re.findall(r"/home/ray/plateau\[([^\]]*)\]", line):
            named |= {e.strip() for e in group.split(",")}
    assert {"gpu", "jax", "jax-gpu", "mlflow"} <= named, named
    assert named <= extras, f"cluster.yaml or docs/cluster.md name extras pyproject.toml lacks: {named - extras}"


def test_the_documented_extras_install_the_engine_and_tracking_where_jobs_need_them(raw):
    """docs/cluster.md's setup lines for keras_jax and tracked jobs, put in cluster.yaml, still pass
    Ray's schema; the head (whose job drivers check the engine and log to MLflow) gets JAX's CPU
    build and MLflow, never CUDA; the GPU workers keep the gpu extra and add JAX's CUDA build."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    documented = _documented_setup()
    assert set(documented) == {"head_setup_commands", "worker_setup_commands"}
    config = prepare_config({**raw, **documented})
    validate_config(config)
    head = _extras(" ".join(config["head_setup_commands"]))
    assert head == {"jax", "mlflow"}, head
    assert "boto3" in " ".join(config["head_setup_commands"]), "the head's autoscaler needs boto3"
    for name in _worker_types(config):
        assert _extras(_setup(config, name)) == {"gpu", "jax-gpu"}
    # the shipped file: the head without CUDA, the workers with TensorFlow's CUDA build
    assert _extras(" ".join(raw["head_setup_commands"])) == set()
    assert _extras(" ".join(raw["worker_setup_commands"])) == {"gpu"}


def test_cluster_yaml_says_how_to_add_the_extras():
    comments = " ".join(line.strip().lstrip("#").strip() for line in CLUSTER_YAML.read_text().splitlines()
                        if line.lstrip().startswith("#"))
    for words in ("`jax` on the head", "`jax-gpu` on the workers", "`mlflow` on the head", "ray up cluster.yaml"):
        assert words in comments, words
