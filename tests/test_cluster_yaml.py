"""cluster.yaml, checked offline: Ray's own schema, then what the schema cannot see.

Ray validates the launcher config with `prepare_config` (merge the provider's defaults) and
`validate_config` (JSON schema), but it does not look inside node_config, nor compare the
cluster with the jobs meant to run on it. So this also checks that every jobs/cluster-*.yaml
spec loads and that the cluster's worker types can supply what it asks for. No Ray is started.
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


def test_image_matches_this_ray_and_installs_gpu_tensorflow(config):
    import ray

    image = config["docker"]["image"]
    major_minor = ".".join(ray.__version__.split(".")[:2])
    assert re.match(rf"^rayproject/ray:{re.escape(major_minor)}\.\d+-py\d+-(gpu|cu\d+)", image), image
    setup = " ".join(config["setup_commands"])
    assert "tensorflow[and-cuda]==2.21" in setup
    assert re.search(r"pip install .*-e \S*plateau", setup), "the project must be installed on the nodes"
    assert "." in config["file_mounts"].values(), "the project directory must be mounted"


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
    workers = max(scaling.num_workers, 1)
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
