"""What the per-epoch replica check costs, side by side with the same run without it.

    python benchmarks/replica_check.py [--data sample] [--epochs 10] [--repeats 2] [--json OUT.json]

Two ways to train throughput.py's spec (the seed model, no callback acting, holdout validation)
with 2 workers on the same data for the same epochs, each in its own subprocess, alternating:

  on    plateau as shipped: after every epoch each rank checksums its weights, Adam's state and
        the learning rate, and the ranks all-gather the checksums
  off   the same run with debug.replica_check=false

Per mode:

  s/epoch   median over epochs 2..E of history.csv's `seconds` (training + global validation)
  cycle s   median gap between consecutive epoch lines: all an epoch costs, the check included

and from the `on` runs' own measurement (each rank times its check; the epoch's report carries
the time into the checkpoint's traces):

  check s   median over epochs 2..E of the slower rank's check
  % epoch   check s / the `on` runs' cycle s: the cost of the check, as a share of an epoch

Epoch 1 is left out everywhere: it traces TensorFlow functions. On a shared machine the
cycle-time ratio on/off moves by more than the 2% it would have to resolve; the direct
measurement is the number to read, the ratio only says nothing else changed.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import EPOCH_LINE, benchmark_spec  # noqa: E402 - the same spec as the throughput table

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MODES = {"on": [], "off": ["--set", "debug.replica_check=false"]}
WORKERS = 2


def run_mode(mode: str, args: argparse.Namespace, workdir: Path, spec: Path, index: int) -> dict:
    """One `plateau train` subprocess; its epoch seconds, cycle gaps and (on) check seconds."""
    from service.checkpoints import layout, resume
    from service.rundir import RunPaths
    from service.spec import load_spec

    name = f"{mode}-{index}"
    cmd = [sys.executable, "-m", "service.cli", "train", str(spec), "--data", args.data, "--workers", str(WORKERS),
           "--epochs", str(args.epochs), "--output", str(workdir), "--name", name, "--fresh", *MODES[mode]]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # an embedded Ray of our own
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            cwd=PROJECT_ROOT)
    arrivals = [time.perf_counter() - started for line in proc.stdout if EPOCH_LINE.match(line)]
    if proc.wait() != 0 or len(arrivals) != args.epochs:
        raise SystemExit(f"{mode} failed (exit {proc.returncode})")
    with open(workdir / name / "history.csv") as f:
        seconds = [float(row["seconds"]) for row in csv.DictReader(f)]
    _, last = resume.latest(RunPaths.of(load_spec(spec, [f"output={workdir}", f"name={name}"])).checkpoints_dir)
    traces = [layout.read_trace(last, rank) for rank in range(WORKERS)]
    checks = [max(t[e].get("replica_check_seconds") or 0.0 for t in traces) for e in range(args.epochs)]
    return {"epoch_seconds": seconds[1:], "cycle_seconds": [b - a for a, b in zip(arrivals, arrivals[1:])],
            "check_seconds": checks[1:] if mode == "on" else []}


def summarise(runs: dict[str, list[dict]]) -> dict:
    pooled = {mode: {key: [v for r in results for v in r[key]] for key in results[0]} for mode, results in runs.items()}
    out = {mode: {"seconds_per_epoch": statistics.median(p["epoch_seconds"]),
                  "cycle_seconds": statistics.median(p["cycle_seconds"])} for mode, p in pooled.items()}
    check = statistics.median(pooled["on"]["check_seconds"])
    out["on"].update(check_seconds=check, check_share_of_epoch=check / out["on"]["cycle_seconds"],
                     check_seconds_max=max(pooled["on"]["check_seconds"]))
    out["cycle_ratio_on_off"] = out["on"]["cycle_seconds"] / out["off"]["cycle_seconds"]
    return out


def print_table(summary: dict, args: argparse.Namespace) -> None:
    print(f"\n{WORKERS} workers, {args.data}, {args.epochs} epochs x {args.repeats} repeat(s); medians of epochs 2..E")
    print(f"{'mode':<5} {'s/epoch':>8} {'cycle s':>8} {'check s':>8} {'% epoch':>8}")
    for mode in MODES:
        e = summary[mode]
        check = f"{e['check_seconds']:>8.4f} {100 * e['check_share_of_epoch']:>7.2f}%" if mode == "on" else ""
        print(f"{mode:<5} {e['seconds_per_epoch']:>8.3f} {e['cycle_seconds']:>8.3f} {check}")
    print(f"cycle on / off: {summary['cycle_ratio_on_off']:.3f}; slowest check of any epoch "
          f"{summary['on']['check_seconds_max']:.4f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="sample", help="any plateau --data source (default: the bundled sample)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2, help="runs per mode, alternating on/off")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    if args.epochs < 3:
        parser.error("--epochs must be at least 3 (epoch 1 is left out, and a cycle needs two epochs)")
    runs: dict[str, list[dict]] = {mode: [] for mode in MODES}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="plateau-replica-check-") as tmp:
        spec = benchmark_spec(Path(tmp))
        for repeat in range(args.repeats):
            for mode in (MODES if repeat % 2 == 0 else reversed(MODES)):
                print(f"[repeat {repeat + 1}/{args.repeats}] {mode} ...", flush=True)
                runs[mode].append(run_mode(mode, args, Path(tmp), spec, repeat))
    summary = summarise(runs)
    print_table(summary, args)
    print(f"load average (1/5/15 min) before {tuple(round(v, 1) for v in load_before)}, "
          f"after {tuple(round(v, 1) for v in os.getloadavg())} on {os.cpu_count()} cores")
    if args.json:
        Path(args.json).write_text(json.dumps({**summary, "runs": runs, "epochs": args.epochs,
                                               "load_before": load_before}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
