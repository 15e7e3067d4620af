"""The seed's experiment as a study, against doing it by hand, side by side on the same data.

    python benchmarks/study.py --data mnist.npz [--seeds 7,8] [--repeats 1] [--json OUT.json]
                               [--set KEY=VALUE ...]

Two ways to answer "does ReduceLROnPlateau help?" for the same arms and seeds:

  by hand   the seed's script, once per arm and seed, one after another, each its own process:
            plain single-process tf_keras `model.fit` of the seed's model with EarlyStopping
            (val_accuracy, patience 2), plus ReduceLROnPlateau (factor 0.1, patience 1,
            min_delta 1e-4) in the second arm, validating on the test set, at most 30 epochs
  study     `plateau compare jobs/seed-comparison.yaml --data DATA --set seeds=[...]`, with
            whatever plan the study makes for this machine (its plan line is shown)

and prints both wall times (command start to exit), the epochs each trained and the ratio
study / by hand. `--set` passes overrides to the study (e.g. `--set workers_per_trial=2`), to
time another plan. With --repeats > 1 the order alternates.
"""

from __future__ import annotations

import argparse
import json
import os
import re
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
    callbacks = [keras.callbacks.EarlyStopping(**EARLY_STOPPING)]
    if arm == "on":
        callbacks.append(keras.callbacks.ReduceLROnPlateau(**REDUCE_LR))
    history = model.fit(x, y, batch_size=BATCH, epochs=EPOCHS, validation_data=(x_test, y_test),
                        callbacks=callbacks, verbose=0)
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    print("RESULT " + json.dumps({"arm": arm, "seed": seed, "epochs": len(history.history["loss"]),
                                  "test_accuracy": accuracy}), flush=True)


def by_hand(data: str, seeds: list[int]) -> dict:
    started, runs = time.perf_counter(), []
    for arm in ("off", "on"):
        for seed in seeds:
            out = subprocess.run([sys.executable, __file__, "--hand-child", arm, str(seed), "--data", data],
                                 capture_output=True, text=True, check=True).stdout
            runs.append(json.loads(out.split("RESULT ", 1)[1]))
    return {"seconds": time.perf_counter() - started, "runs": runs, "epochs": sum(r["epochs"] for r in runs)}


# ---------------------------------------------------------------------------------------------
# The study


def study(data: str, seeds: list[int], overrides: list[str], workdir: Path) -> dict:
    output = workdir / f"study-{time.monotonic_ns()}"
    command = ["plateau", "compare", str(SPEC), "--data", data, "--output", str(output), "--fresh",
               "--set", f"seeds=[{', '.join(map(str, seeds))}]", "--quiet-trials"]
    for item in overrides:
        command += ["--set", item]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"the study failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    plan = next((line for line in done.stdout.splitlines() if re.match(r"^\S+: plan:", line)), "")
    rows = (output / "seed-comparison" / "comparison.csv").read_text().splitlines()
    return {"seconds": seconds, "plan": plan, "trials": len(rows) - 1}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="MNIST .npz in Keras layout (or any plateau --data source)")
    parser.add_argument("--seeds", default="7,8", help="comma-separated seeds (default 7,8)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="an override for the study")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--hand-child", nargs=2, metavar=("ARM", "SEED"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.hand_child:
        hand_child(args.data, args.hand_child[0], int(args.hand_child[1]))
        return 0
    seeds = [int(s) for s in args.seeds.split(",")]
    results = []
    with tempfile.TemporaryDirectory(prefix="plateau-study-bench-") as tmp:
        for repeat in range(args.repeats):
            order = ("hand", "study") if repeat % 2 == 0 else ("study", "hand")
            pair = {}
            for which in order:
                pair[which] = by_hand(args.data, seeds) if which == "hand" else study(args.data, seeds, args.set, Path(tmp))
            pair["ratio"] = pair["study"]["seconds"] / pair["hand"]["seconds"]
            results.append(pair)
            print(f"repeat {repeat + 1}: by hand {pair['hand']['seconds']:.1f}s ({pair['hand']['epochs']} epochs in "
                  f"{len(pair['hand']['runs'])} runs), study {pair['study']['seconds']:.1f}s "
                  f"({pair['study']['trials']} trials), study / by hand {pair['ratio']:.2f}", flush=True)
            print(f"  {pair['study']['plan']}", flush=True)
    load = os.getloadavg()
    print(f"seeds {seeds}, data {args.data}; load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"seeds": seeds, "repeats": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
