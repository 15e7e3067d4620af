"""service/storage.py: placeholder buckets and node-local paths, judged from the string alone."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from service.storage import bucket_of, is_node_local, placeholder_bucket

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("uri", [
    "s3://YOUR-BUCKET/plateau/checkpoints",       # what the cluster specs ship
    "s3://your-bucket",
    "S3://Your_Bucket_Name/x",
    "gs://my-bucket/runs",
    "s3://my-s3-bucket/",
    "s3://example-bucket/plateau",
    "abfs://sample.bucket/x",
    "s3://bucket/plateau",
    "s3://BUCKET_NAME/plateau",
    "s3://change-me/plateau",
    "s3://xxx/plateau",
    "s3://<bucket>/plateau/checkpoints",
    "gs://{bucket}/x",
    "s3://${BUCKET}/x",
    "s3://real-bucket/<prefix>/checkpoints",      # a template marker anywhere
    "s3:///plateau",                              # no bucket at all
    "  s3://YOUR-BUCKET/x  ",
])
def test_placeholders_are_recognised(uri):
    assert placeholder_bucket(uri) is True


@pytest.mark.parametrize("uri", [
    "s3://plateau-checkpoints-prod/plateau",
    "s3://my-bucket-prod/plateau",               # a placeholder word among real ones
    "s3://your-company-data/plateau",
    "gs://ml-team-bucket/runs",
    "s3://bucketeer/x",
    "hdfs://namenode:8020/plateau",
    "/home/ray/results",                          # plain paths have no bucket
    "results/checkpoints",
    "file:///mnt/shared/checkpoints",
    "~/my-bucket",
])
def test_real_buckets_and_paths_are_not_placeholders(uri):
    assert placeholder_bucket(uri) is False


def test_bucket_of():
    assert bucket_of("s3://YOUR-BUCKET/plateau/checkpoints") == "YOUR-BUCKET"
    assert bucket_of("gs://b/x/y") == "b"
    assert bucket_of("/abs/path") == ""
    assert bucket_of("file:///abs/path") == ""


def test_the_shipped_cluster_specs_still_hold_the_placeholder():
    # The specs must be edited before a real run; the submit-time check relies on this rule
    # recognising exactly what they ship.
    for spec in sorted((ROOT / "jobs").glob("cluster-*.yaml")):
        storage = yaml.safe_load(spec.read_text())["scaling"]["storage_path"]
        assert placeholder_bucket(storage), f"{spec.name}: {storage}"


@pytest.mark.parametrize("path", [
    "results", "./results/x", "~/results", "/home/ray/results", "/mnt/nfs/checkpoints",
    "file:///home/ray/results", "file://relative-ish", "local:///tmp/x", "C:\\results",
])
def test_plain_paths_and_file_uris_are_node_local(path):
    assert is_node_local(path) is True


@pytest.mark.parametrize("uri", [
    "s3://bucket/plateau", "S3://b/x", "s3a://b/x", "gs://b/x", "gcs://b/x", "hdfs://nn:8020/x",
    "abfs://container@account.dfs.core.windows.net/x", "abfss://c@a.dfs.core.windows.net/x",
    "az://c/x", "memory://x",
])
def test_uris_of_other_schemes_are_shared(uri):
    assert is_node_local(uri) is False


def test_absolute_paths_are_shared_only_when_named_so():
    mounts = ["/mnt/nfs", "file:///efs/team/"]
    assert is_node_local("/mnt/nfs/checkpoints", shared_mounts=mounts) is False
    assert is_node_local("/mnt/nfs", shared_mounts=mounts) is False
    assert is_node_local("file:///efs/team/plateau", shared_mounts=mounts) is False
    assert is_node_local("/mnt/nfs2/checkpoints", shared_mounts=mounts) is True   # prefix, not a mount
    assert is_node_local("/home/ray/results", shared_mounts=mounts) is True
    assert is_node_local("relative/under/mnt/nfs", shared_mounts=mounts) is True


@pytest.mark.parametrize("path", ["", "   "])
def test_an_empty_path_is_an_error(path):
    with pytest.raises(ValueError):
        is_node_local(path)
