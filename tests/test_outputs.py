"""Output files and lines, no Ray: file modes and strict JSON, which stream a line goes to, and
the places a run cannot go (an unusable output folder, an address from RAY_ADDRESS), refused in
one line before Ray starts; the job command `submit --fresh` sends.
"""

from __future__ import annotations

import json
import os
import socket

import pytest

from service import console, jobs
from service.report import files as run_files
from tests.support.project import plateau


# ---------------------------------------------------------------------------------------------
# Output files and lines


def test_output_files_follow_the_umask_and_json_is_strict(tmp_path):
    old = os.umask(0o027)
    try:
        run_files.write_json(tmp_path / "summary.json", {"a": float("nan"), "b": [1.5, float("inf")], "c": {"d": 2}})
        run_files.write_decisions(tmp_path / "decisions.jsonl", [{"values": {"val_loss": float("nan")}}])
    finally:
        os.umask(old)
    for name in ("summary.json", "decisions.jsonl"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o640
    strict = dict(parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert json.loads((tmp_path / "summary.json").read_text(), **strict) == {"a": None, "b": [1.5, None], "c": {"d": 2}}
    assert run_files.read_decisions(tmp_path / "decisions.jsonl") == [{"values": {"val_loss": None}}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["decisions.jsonl", "summary.json"]  # no temporaries


def test_failure_and_warning_lines_go_to_stderr_progress_to_stdout(capsys):
    for line in ("epoch 1/5  loss 0.5", "plateau: training failed", "warning: x", "WARNING: data", "done: 5 epochs"):
        console.say(line)
    captured = capsys.readouterr()
    assert captured.out.splitlines() == ["epoch 1/5  loss 0.5", "done: 5 epochs"]
    assert captured.err.splitlines() == ["plateau: training failed", "warning: x", "WARNING: data"]


def test_an_unusable_output_location_is_one_line_exit_2_before_ray(tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    done = plateau("train", "--data", "sample", "--output", str(tmp_path / "a-file" / "results"), cwd=tmp_path)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.splitlines() == [
        f"plateau: cannot write the run's folder {tmp_path}/a-file/results/plateau (Not a directory); choose a "
        "writable place with --output (or the spec's output)"]


def test_an_address_from_ray_address_is_named_as_such(tmp_path):
    env = dict(os.environ, RAY_ADDRESS="http://127.0.0.1:8265")
    done = plateau("train", "--data", "sample", cwd=tmp_path, env=env)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "plateau: RAY_ADDRESS=http://127.0.0.1:8265 (from the environment; unset it to train on an embedded Ray): "
        "give the cluster's GCS address HOST:6379 (or 'auto'); http://HOST:8265 is the job server, used by "
        "'plateau submit'"]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    flag = plateau("train", "--data", "sample", "--address", f"127.0.0.1:{port}", cwd=tmp_path, env=env)
    assert flag.returncode == 2 and flag.stderr.startswith(f"plateau: --address 127.0.0.1:{port}: nothing answers")
    assert not (tmp_path / "results").exists()


def test_submit_fresh_is_part_of_the_jobs_command():
    plain = jobs.build_submission("jobs/seed-reduce-lr.yaml", ["data.source=sample"])
    fresh = jobs.build_submission("jobs/seed-reduce-lr.yaml", ["data.source=sample"], fresh=True)
    assert plain["entrypoint"] == ("python -m service.cli run jobs/seed-reduce-lr.yaml --address auto "
                                   "--set data.source=sample")
    assert fresh["entrypoint"] == plain["entrypoint"] + " --fresh"
