"""The seed's experiment as a study, against doing it by hand, side by side on the same data.

    python benchmarks/study.py --data mnist.npz [--seeds 7,8] [--hand-seeds 7,8,9]
                               [--engines tf_keras,keras_jax] [--repeats 1] [--json OUT.json]
                               [--set KEY=VALUE ...]

Two ways to answer "does ReduceLROnPlateau help?" for the same arms:

  by hand   the seed's script, once per arm and seed (`--hand-seeds`, default `--seeds`), one
            after another, each its own process: plain single-process tf_keras `model.fit` of the
            seed's model with EarlyStopping (val_accuracy, patience 2), plus ReduceLROnPlateau
            (factor 0.1, patience 1, min_delta 1e-4) in the second arm, validating on the test
            set, at most 30 epochs
  study     `plateau compare jobs/seed-comparison.yaml --data DATA --set seeds=[...]` on each of
            `--engines` (`base.training.engine`), with whatever plan the study makes for this
            machine (its plan line is shown)

and prints the wall times (command start to exit), the epochs each trained, the ratio study / by
hand for each engine (and per epoch trained: the study seeds its trials its own way, so they stop
at other epochs than the script's), and start-up: the by-hand script's from its process's start to its first
epoch's end (the median over its runs), against a trial's from its start to its first epoch line.
A trial starts when the study hands it a slot: the first trials at the study's plan line (Tune's
start and the trial's process's start count), each later one when an earlier trial's finished
line frees a slot (trials start in the grid's order). `--set` passes overrides to the studies (e.g.
`--set workers_per_trial=2`), to time another plan. With --repeats > 1 the order alternates.
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
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "jobs" / "seed-comparison.yaml"
# The seed's settings (jobs/seed-reduce-lr.yaml): what the by-hand script hard-codes.
EPOCHS, BATCH = 30, 200
EARLY_STOPPING = dict(monitor="val_accuracy", patience=2)
REDUCE_LR = dict(monitor="val_accuracy", factor=0.1, patience=1, min_delta=1e-4, cooldown=0, min_lr=0)


# ---------------------------------------------------------------------------------------------
# By hand: the seed's script, run as `study.py --hand-child ARM SEED` in its own process


def hand_child(data: str, arm: str, seed: int) -> None:
    """One arm and seed the way the seed's script trains it: stock layers, stock callbacks."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tf_keras as keras

    from service import data as data_lib

    splits = data_lib.load(data, "test", warn=lambda m: None)
    x, y = splits.x_train.astype("float32") / 255, keras.utils.to_categorical(splits.y_train, 10)
    x_test, y_test = splits.x_test.astype("float32") / 255, keras.utils.to_categorical(splits.y_test, 10)
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input(shape=(784,)),
        keras.layers.Dense(784, activation="relu", kernel_initializer="normal"),
        keras.layers.Dropout(0.5),
        keras.layers.Dense(10, activation="softmax", kernel_initializer="normal"),
    ])
    model.compile(loss="categorical_crossentropy", optimizer=keras.optimizers.Adam(0.01), metrics=["accuracy"])
    callbacks = [keras.callbacks.EarlyStopping(**EARLY_STOPPING),
                 keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: print(f"EPOCH {epoch + 1}", flush=True))]
    if arm == "on":
        callbacks.append(keras.callbacks.ReduceLROnPlateau(**REDUCE_LR))
    history = model.fit(x, y, batch_size=BATCH, epochs=EPOCHS, validation_data=(x_test, y_test),
                        callbacks=callbacks, verbose=0)
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    print("RESULT " + json.dumps({"arm": arm, "seed": seed, "epochs": len(history.history["loss"]),
                                  "test_accuracy": accuracy}), flush=True)


def timed_lines(command: list[str]) -> tuple[list[tuple[float, str]], int, float]:
    """Run `command`; its stdout lines, each with the seconds since the command started, its exit
    code and its wall time."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # an embedded Ray, never the shell's
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, env=env,
                            cwd=ROOT)
    lines = [(time.perf_counter() - started, line.rstrip("\n")) for line in proc.stdout]
    code = proc.wait()
    return lines, code, time.perf_counter() - started


def by_hand(data: str, seeds: list[int]) -> dict:
    started, runs, startups = time.perf_counter(), [], []
    for arm in ("off", "on"):
        for seed in seeds:
            lines, code, _ = timed_lines([sys.executable, __file__, "--hand-child", arm, str(seed), "--data", data])
            if code != 0:
                raise SystemExit(f"the by-hand run {arm} {seed} failed ({code}):\n" + "\n".join(t for _, t in lines[-30:]))
            startups.append(next(at for at, text in lines if text == "EPOCH 1"))
            runs.append(json.loads(next(text for _, text in lines if text.startswith("RESULT "))[len("RESULT "):]))
    return {"seconds": time.perf_counter() - started, "runs": runs, "epochs": sum(r["epochs"] for r in runs),
            "startup_seconds": statistics.median(startups), "startups": startups}


# ---------------------------------------------------------------------------------------------
# The study

EPOCH_ONE = re.compile(r"^\[ *(\d+)/\d+\] .*  epoch 1/\d+  ")
FINISHED = re.compile(r"^\[ *(\d+)/\d+\] .*  \| study: ")
PLAN = re.compile(r"^\S+: plan: (\d+) trial\(s\) at once")


def trial_startups(lines: list[tuple[float, str]]) -> dict[int, dict]:
    """Trial k -> its start and the seconds from it to its first epoch line (see the docstring)."""
    plan_at, concurrent = next((at, int(m.group(1))) for at, text in lines if (m := PLAN.match(text)))
    freed = sorted(at for at, text in lines if FINISHED.match(text))
    firsts = {int(m.group(1)): at for at, text in lines if (m := EPOCH_ONE.match(text))}
    out = {}
    for k, first in sorted(firsts.items()):
        start = plan_at if k <= concurrent else freed[k - concurrent - 1]
        out[k] = {"new_process": k <= concurrent, "seconds": first - start}
    return out


def study(data: str, seeds: list[int], engine: str, overrides: list[str], workdir: Path) -> dict:
    output = workdir / f"study-{time.monotonic_ns()}"
    command = [sys.executable, "-m", "service.cli", "compare", str(SPEC), "--data", data, "--output", str(output), "--fresh",
               "--set", f"seeds=[{', '.join(map(str, seeds))}]", "--set", f"base.training.engine={engine}"]
    for item in overrides:
        command += ["--set", item]
    lines, code, seconds = timed_lines(command)
    if code != 0:
        raise SystemExit(f"the study failed ({code}):\n" + "\n".join(text for _, text in lines[-40:]))
    plan = next((text for _, text in lines if re.match(r"^\S+: plan:", text)), "")
    with (output / "seed-comparison" / "comparison.csv").open() as f:
        rows = list(csv.DictReader(f))
    startups = trial_startups(lines)
    return {"engine": engine, "seconds": seconds, "plan": plan, "trials": len(rows),
            "epochs": sum(int(r["epochs_run"] or 0) for r in rows), "startups": startups,
            "startup_seconds": statistics.median(t["seconds"] for t in startups.values())}


def startup_words(entry: dict, plain: float) -> str:
    """'trial start to first epoch: median 4.1s (0.45x plain's), new processes 11.0s, later 2.9s'."""
    times = entry["startups"].values()
    parts = [f"median {entry['startup_seconds']:.1f}s ({entry['startup_seconds'] / plain:.2f}x plain's)"]
    for label, new in (("the first in a process", True), ("later", False)):
        chosen = [t["seconds"] for t in times if t["new_process"] is new]
        if chosen:
            median = statistics.median(chosen)
            parts.append(f"{label} {median:.1f}s ({median / plain:.2f}x)")
    return "trial start to first epoch: " + ", ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="MNIST .npz in Keras layout (or any plateau --data source)")
    parser.add_argument("--seeds", default="7,8", help="the study's seeds, comma-separated (default 7,8)")
    parser.add_argument("--hand-seeds", help="the seeds done by hand (default: --seeds)")
    parser.add_argument("--engines", default="tf_keras,keras_jax", help="a study on each (default tf_keras,keras_jax)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="an override for the studies")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--hand-child", nargs=2, metavar=("ARM", "SEED"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.hand_child:
        hand_child(args.data, args.hand_child[0], int(args.hand_child[1]))
        return 0
    if Path(args.data).exists():  # the commands run in the project's folder
        args.data = str(Path(args.data).resolve())
    seeds = [int(s) for s in args.seeds.split(",")]
    hand_seeds = [int(s) for s in args.hand_seeds.split(",")] if args.hand_seeds else seeds
    engines = args.engines.split(",")
    results = []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="plateau-study-bench-") as tmp:
        for repeat in range(args.repeats):
            order = ["hand", *engines] if repeat % 2 == 0 else [*engines, "hand"]
            pair: dict = {"studies": {}}
            for which in order:
                if which == "hand":
                    pair["hand"] = by_hand(args.data, hand_seeds)
                else:
                    pair["studies"][which] = study(args.data, seeds, which, args.set, Path(tmp))
            hand = pair["hand"]
            print(f"repeat {repeat + 1}: by hand {hand['seconds']:.1f}s (seeds {hand_seeds}, {hand['epochs']} epochs in "
                  f"{len(hand['runs'])} runs; start-up to the first epoch's end, median {hand['startup_seconds']:.1f}s)",
                  flush=True)
            for engine, entry in pair["studies"].items():
                entry["ratio"] = entry["seconds"] / hand["seconds"]
                entry["startup_ratio"] = entry["startup_seconds"] / hand["startup_seconds"]
                # The study's seeding is plateau's, not the script's: its trials stop at other epochs.
                per_epoch = (entry["seconds"] / entry["epochs"]) / (hand["seconds"] / hand["epochs"])
                print(f"  study on {engine}: {entry['seconds']:.1f}s (seeds {seeds}, {entry['trials']} trials, "
                      f"{entry['epochs']} epochs), study / by hand {entry['ratio']:.2f}, per epoch trained "
                      f"{per_epoch:.2f}", flush=True)
                print(f"    {startup_words(entry, hand['startup_seconds'])}", flush=True)
                print(f"    {entry['plan']}", flush=True)
            results.append(pair)
    load = os.getloadavg()
    print(f"data {args.data}; load average before {load_before[0]:.1f} {load_before[1]:.1f} {load_before[2]:.1f}, "
          f"after {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"seeds": seeds, "hand_seeds": hand_seeds, "repeats": results,
                                               "load_before": load_before, "load_after": load}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
