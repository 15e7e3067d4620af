"""Throughput of plateau against plain tf_keras, on the same data, side by side.

    python benchmarks/throughput.py --data mnist.npz [--epochs 5] [--repeats 1] [--json OUT.json]
                                    [--modes plain,workers_1,workers_2,local] [--set KEY=VALUE ...]
                                    [--beside]
    python benchmarks/throughput.py --data mnist.npz --model examples/cnn.py:build --modes workers_1,jax_1,workers_2,jax_2
    python benchmarks/throughput.py --data mnist.npz --modes plain,plain_jax,workers_1,jax_1,workers_2,jax_2

Ways to train the seed's model (Dense 784 relu -> Dropout 0.5 -> Dense 10 softmax, Adam
0.01, global batch 200) for the same epochs on the same training images, validating on the
same holdout after every epoch:

  plain      one process, tf_keras `model.fit` -- the yardstick every ratio is taken against
  workers_1  `plateau train --workers 1`  (one Ray Train worker, no MultiWorkerMirroredStrategy)
  workers_2  `plateau train --workers 2`  (two Ray Train workers, MWMS all-reduce over gRPC)
  local      `plateau train --workers 0`  (Ray Train's in-process local mode)

and the same on the keras_jax engine (`pip install -e ".[jax]"`; not in the default --modes):

  plain_jax  one process, Keras 3 on JAX, `model.fit` (stock Dropout) -- the JAX yardstick
  jax_1      `plateau train --workers 1 --set training.engine=keras_jax`
  jax_2      `plateau train --workers 2 --set training.engine=keras_jax`  (gloo all-reduce)

Each runs in its own subprocess (its own memory, its own TensorFlow), one after the other;
with --repeats > 1 the order rotates so that a burst of load from elsewhere on the machine does
not always land on the same mode. Per mode the table shows:

  s/epoch     median over epochs 2..E of the epoch's seconds (epoch 1 pays for tracing);
              plateau: history.csv `seconds` (train + global validation, what the epoch line
              prints); plain: a Keras callback around the same span (fit + validation)
  cycle s     median gap between consecutive epoch lines on stdout: everything an epoch costs,
              including what plateau does after the metrics (checkpoint, ray.train.report)
  img/s       training images per second at `s/epoch`
  x plain     s/epoch divided by plain's (tf_keras's, for every mode: the engines side by side)
  start-up    subprocess start -> the first epoch line on its stdout
  finish s    plateau: the last epoch line -> the `done:` line (the test evaluation, the model's
              export, Ray Train ending the workers, the run's files)
  peak MB     peak RSS of the process that trains (per Ray worker: the largest worker)

--beside starts a second, identical plateau run next to each measured one (not measured
itself): the same numbers on a machine that is busy with another run.

--model FILE.py:FUNCTION trains your own model (`model.build`, with its default kwargs) instead
of the seed's, in every mode: the plain ones build it with the engine's `build_model`, as the
workers do, and feed it the data in its own shape (28x28 for MNIST).

Numbers from a shared machine are noisy: read the ratios, repeat (--repeats 3) when the
machine is busy, and look at the load averages printed with the table.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where a benchmark runs, not to parse the arguments
    import numpy as np

try:
    import psutil
except ImportError:
    # Ray vendors psutil in ray/thirdparty_files and puts that folder on sys.path on import.
    import ray  # noqa: F401
    import psutil

MODES = ("plain", "workers_1", "workers_2", "local", "plain_jax", "jax_1", "jax_2")
DEFAULT_MODES = ("plain", "workers_1", "workers_2", "local")
WORKERS = {"workers_1": 1, "workers_2": 2, "local": 0, "jax_1": 1, "jax_2": 2}
PLAIN = {"plain": "tf_keras", "plain_jax": "keras_jax"}  # the yardsticks, by the Keras they run
ENGINE = {"jax_1": "keras_jax", "jax_2": "keras_jax"}  # plateau modes on another engine than the default
GLOBAL_BATCH = 200
SEED = 7
# Both plateau's epoch line ("epoch 3/5 ...") and the plain child's start with this.
EPOCH_LINE = re.compile(r"^epoch\s+(\d+)/")


# ---------------------------------------------------------------------------------------------
# (a) plain tf_keras, run as `throughput.py --plain-child ...` in its own process


def plain_child(data: str, epochs: int, engine: str = "tf_keras", build: str | None = None) -> None:
    """The yardstick: stock `model.fit` on arrays, in one process, no Ray, no strategy.

    Same data split as plateau (service.data.load with the holdout), same compiled model
    (the engine's build_model: same initialisers, same optimizer; tf_keras's step-seeded dropout,
    Keras 3's stock one), same global batch, validation on the holdout after every epoch. The
    framework keeps its default thread pools (the whole machine), as a user's own script would.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from service import data as data_lib
    from service.engines import KERAS_ON_JAX
    from service.spec import ModelSpec

    if engine == "keras_jax":
        os.environ.setdefault(*KERAS_ON_JAX)
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        import keras

        from service.engines.building import stock_copy
        from service.engines.keras_jax.model import SeededDropout
        from service.engines.keras_jax.model import build_model as seeded_build

        def build_model(spec: ModelSpec, **kwargs) -> keras.Model:  # Keras 3's stock Dropout: the seeded one draws in plateau's epoch only
            return stock_copy(seeded_build(spec, **kwargs), keras, SeededDropout, spec.learning_rate)
    else:
        import tf_keras as keras

        from service.engines.tf_keras.model import build_model

    splits = data_lib.load(data, "holdout", warn=lambda m: None, layout=data_lib.Layout(own=build is not None))
    n = len(splits.x_train) // GLOBAL_BATCH * GLOBAL_BATCH  # whole batches, like plateau's steps

    def prepare(x: np.ndarray, y: np.ndarray):
        return x.astype("float32") / (255.0 if x.dtype.name == "uint8" else 1.0), keras.utils.to_categorical(y, 10)

    x, y = prepare(splits.x_train[:n], splits.y_train[:n])
    x_val, y_val = prepare(splits.x_val, splits.y_val)
    model_spec = ModelSpec(build=build, learning_rate=0.01) if build else ModelSpec()
    model = build_model(model_spec, seed=SEED, input_shape=x.shape[1:], classes=10)

    class EpochTimer(keras.callbacks.Callback):
        # on_epoch_end runs after Keras validated, so the span is fit + validation, the same
        # span plateau's history `seconds` covers.
        def on_epoch_begin(self, epoch: int, logs: dict | None = None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict | None = None):
            seconds = time.perf_counter() - self.start
            print(f"epoch {epoch + 1}/{epochs} val_accuracy {logs['val_accuracy']:.4f} {seconds:.3f}s",
                  flush=True)
            print("SECONDS " + json.dumps({"epoch": epoch + 1, "seconds": seconds}), flush=True)

    model.fit(x, y, batch_size=GLOBAL_BATCH, epochs=epochs, validation_data=(x_val, y_val),
              shuffle=True, callbacks=[EpochTimer()], verbose=0)


# ---------------------------------------------------------------------------------------------
# Running one mode in a subprocess and watching it


class MemoryWatcher(threading.Thread):
    """Polls the RSS of a process tree: the root's peak, and each Ray Train worker's peak.

    Ray's processes are descendants of the plateau driver (ray.init starts the raylet, which
    forks the workers), so walking the tree finds the RayTrainWorker actors by their process
    title. 0.1 s polling can miss a spike shorter than that; the weights are a few MB, so
    the peaks here are plateaus of TensorFlow's allocations, not spikes.
    """

    def __init__(self, pid: int, interval: float = 0.1):
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.interval = interval
        self.root_peak = 0
        self.worker_peaks: dict[int, int] = {}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                self.root_peak = max(self.root_peak, self.root.memory_info().rss)
                children = self.root.children(recursive=True)
            except psutil.Error:
                break
            for child in children:
                try:
                    if "RayTrainWorker" in child.name() or "RayTrainWorker" in " ".join(child.cmdline()[:1]):
                        rss = child.memory_info().rss
                        self.worker_peaks[child.pid] = max(self.worker_peaks.get(child.pid, 0), rss)
                except psutil.Error:
                    continue
            self.done.wait(self.interval)


def run_mode(mode: str, args: argparse.Namespace, workdir: Path, spec_path: Path, run_index: int) -> dict:
    """One subprocess for `mode`; returns its epoch times, start-up and memory."""
    name = f"{mode}-{run_index}"
    if mode in PLAIN:
        cmd = [sys.executable, os.path.abspath(__file__), "--plain-child", PLAIN[mode], "--data", args.data,
               "--epochs", str(args.epochs)]
        if args.model:
            cmd += ["--model", _absolute(args.model)]
    else:
        cmd = [sys.executable, "-m", "service.cli", "train", str(spec_path), "--data", args.data,
               "--workers", str(WORKERS[mode]), "--epochs", str(args.epochs),
               "--output", str(workdir), "--name", name, "--fresh"]
        if mode in ENGINE:
            cmd += ["--set", f"training.engine={ENGINE[mode]}"]
        for override in args.set:
            cmd += ["--set", override]
    env = dict(os.environ)
    # Always an embedded Ray of our own: never join a cluster the caller's shell points at.
    env.pop("RAY_ADDRESS", None)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    beside = None
    if args.beside and mode not in PLAIN:  # the same run again, as load only
        beside = subprocess.Popen([f"{name}-beside" if part == name else part for part in cmd], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, env=env, cwd=Path(__file__).resolve().parent.parent)

    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1, env=env, cwd=Path(__file__).resolve().parent.parent)
    watcher = MemoryWatcher(proc.pid)
    watcher.start()
    line_times: list[float] = []  # when each epoch line arrived, seconds since start
    plain_seconds: list[float] = []
    tail: list[str] = []
    done_at = None
    for line in proc.stdout:
        now = time.perf_counter() - started
        if EPOCH_LINE.match(line):
            line_times.append(now)
        if line.startswith("done:"):
            done_at = now
        if line.startswith("SECONDS "):
            plain_seconds.append(json.loads(line[len("SECONDS "):])["seconds"])
            continue
        tail = (tail + [line.rstrip()])[-20:]
        if args.verbose:
            print(f"  [{mode} {now:6.1f}s] {line.rstrip()}", flush=True)
    code = proc.wait()
    total = time.perf_counter() - started
    if beside is not None:
        beside.wait()
    watcher.done.set()
    watcher.join()
    if code != 0 or not line_times:
        raise SystemExit(f"{mode} failed (exit {code}):\n" + "\n".join(tail))

    if mode in PLAIN:
        seconds = plain_seconds
        peak = watcher.root_peak
    else:
        with open(workdir / name / "history.csv") as f:
            seconds = [float(row["seconds"]) for row in csv.DictReader(f)]
        # Local mode trains inside the driver; Ray workers train in their own processes.
        peak = max(watcher.worker_peaks.values()) if watcher.worker_peaks else watcher.root_peak
    steady = seconds[1:] or seconds  # epoch 1 traces the functions: leave it out (unless it is all)
    gaps = [b - a for a, b in zip(line_times, line_times[1:])]
    return {
        "epoch_seconds": [round(s, 3) for s in seconds],
        "seconds_per_epoch": statistics.median(steady),
        "cycle_seconds_per_epoch": statistics.median(gaps) if gaps else None,
        "startup_seconds": line_times[0],
        "finish_seconds": done_at - line_times[-1] if done_at is not None else None,
        "total_seconds": total,
        "peak_rss_mb": peak / 2**20,
        "worker_peak_rss_mb": sorted(round(v / 2**20) for v in watcher.worker_peaks.values()),
        "beside": beside is not None,
    }


def _absolute(build: str) -> str:
    """FILE.py:FUNCTION with FILE made absolute (the spec and the children live elsewhere)."""
    file, _, function = build.rpartition(":")
    return f"{Path(file).resolve()}:{function}" if file.endswith(".py") else build


def benchmark_spec(workdir: Path, build: str | None = None) -> Path:
    """The spec every plateau mode trains: the seed model (or `build`'s), nothing that acts mid-run.

    No ReduceLROnPlateau and no EarlyStopping (they would end runs at different epochs);
    holdout validation like the plain run; one checkpoint kept, as a default run would
    write one per epoch anyway.
    """
    model = {"build": _absolute(build)} if build else {"hidden_units": 784, "dropout": 0.5}
    spec = {
        "kind": "train",
        "name": "throughput",
        "data": {"validation": "holdout"},
        "model": {**model, "learning_rate": 0.01},
        "training": {"batch_size": GLOBAL_BATCH, "seed": SEED},
        "early_stopping": None,
        "reduce_lr": None,
    }
    path = workdir / "throughput.yaml"
    path.write_text(json.dumps(spec))  # JSON is YAML
    return path


# ---------------------------------------------------------------------------------------------
# Table and JSON


def summarise(runs: dict[str, list[dict]], n_images: int) -> dict:
    """Per mode: medians over repeats; ratios against plain's median."""
    out = {}
    for mode, results in runs.items():
        med = lambda key: statistics.median([r[key] for r in results if r[key] is not None] or [0.0])  # noqa: E731
        cycles = [r["cycle_seconds_per_epoch"] for r in results if r["cycle_seconds_per_epoch"]]
        out[mode] = {
            "seconds_per_epoch": round(med("seconds_per_epoch"), 3),
            "cycle_seconds_per_epoch": round(statistics.median(cycles), 3) if cycles else None,
            "images_per_second": round(n_images / med("seconds_per_epoch")),
            "startup_seconds": round(med("startup_seconds"), 1),
            "finish_seconds": round(med("finish_seconds"), 2) if mode not in PLAIN else None,
            "peak_rss_mb": round(max(r["peak_rss_mb"] for r in results)),
            "runs": results,
            "beside": bool(results and results[0].get("beside")),
        }
    plain = out.get("plain", {}).get("seconds_per_epoch")
    plain_startup = out.get("plain", {}).get("startup_seconds")
    for entry in out.values():
        entry["ratio_to_plain"] = round(entry["seconds_per_epoch"] / plain, 2) if plain else None
        entry["startup_ratio_to_plain"] = round(entry["startup_seconds"] / plain_startup, 2) if plain_startup else None
    return out


def print_table(summary: dict, epochs: int, repeats: int) -> None:
    print(f"\n{epochs} epochs, {repeats} repeat(s); s/epoch = median of epochs 2..{epochs} (median over repeats)")
    head = (f"{'mode':<10} {'s/epoch':>8} {'cycle s':>8} {'img/s':>8} {'x plain':>8} {'start-up s':>10} "
            f"{'x plain':>8} {'finish s':>8} {'peak MB':>8}")
    print(head)
    print("-" * len(head))
    for mode in MODES:
        if mode not in summary:
            continue
        e = summary[mode]
        ratio = f"{e['ratio_to_plain']:.2f}" if e["ratio_to_plain"] is not None else "-"
        cycle = f"{e['cycle_seconds_per_epoch']:.2f}" if e["cycle_seconds_per_epoch"] else "-"
        startup_ratio = f"{e['startup_ratio_to_plain']:.2f}" if e["startup_ratio_to_plain"] is not None else "-"
        finish = f"{e['finish_seconds']:.2f}" if e["finish_seconds"] is not None else "-"
        print(f"{mode:<10} {e['seconds_per_epoch']:>8.2f} {cycle:>8} {e['images_per_second']:>8} "
              f"{ratio:>8} {e['startup_seconds']:>10.1f} {startup_ratio:>8} {finish:>8} {e['peak_rss_mb']:>8}")
    for mode in MODES:
        if mode in summary:
            print(f"  {mode}: epoch seconds per run: {[r['epoch_seconds'] for r in summary[mode]['runs']]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="MNIST .npz in Keras layout (or any plateau --data source)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=1, help="runs per mode, interleaved")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--modes", default=",".join(DEFAULT_MODES), help="comma-separated subset of " + ",".join(MODES))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="spec override for the plateau modes, e.g. training.steps_per_execution=50")
    parser.add_argument("--model", metavar="FILE.py:FUNCTION", help="your own model's builder, for the plateau modes")
    parser.add_argument("--verbose", action="store_true", help="echo every subprocess line")
    parser.add_argument("--beside", action="store_true", help="a second identical plateau run beside each measured one")
    parser.add_argument("--plain-child", choices=sorted(set(PLAIN.values())), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.plain_child:
        plain_child(args.data, args.epochs, args.plain_child, args.model)
        return 0

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = set(modes) - set(MODES)
    if unknown:
        parser.error(f"unknown modes {sorted(unknown)}; choose from {', '.join(MODES)}")

    from service import data as data_lib

    n_train = len(data_lib.load(args.data, "holdout", warn=lambda m: None).x_train)
    n_images = n_train // GLOBAL_BATCH * GLOBAL_BATCH  # plateau trains whole global batches
    load_before = os.getloadavg()
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory(prefix="plateau-throughput-") as tmp:
        workdir = Path(tmp)
        spec_path = benchmark_spec(workdir, args.model)
        for repeat in range(args.repeats):
            # Rotate the order each repeat: a noisy neighbour then hits every mode in turn.
            order = modes[repeat % len(modes):] + modes[: repeat % len(modes)]
            for mode in order:
                print(f"[repeat {repeat + 1}/{args.repeats}] {mode} ...", flush=True)
                result = run_mode(mode, args, workdir, spec_path, repeat)
                runs[mode].append(result)
                print(f"  s/epoch {result['seconds_per_epoch']:.2f}, start-up {result['startup_seconds']:.1f}s, "
                      f"epochs {result['epoch_seconds']}", flush=True)
    load_after = os.getloadavg()

    summary = summarise(runs, n_images)
    print_table(summary, args.epochs, args.repeats)
    print(f"load average (1/5/15 min) before {tuple(round(v, 1) for v in load_before)}, "
          f"after {tuple(round(v, 1) for v in load_after)} on {os.cpu_count()} cores")
    if args.json:
        doc = {
            **summary,
            "machine": {"cores": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
                        "load_before": load_before, "load_after": load_after},
            "epochs": args.epochs,
            "repeats": args.repeats,
            "overrides": args.set,
            "model": args.model or "the seed's",
        }
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
