"""plateau's decision stack on Keras 3's classes (the keras_jax engine's) against stock Keras 3, for
every parameter set and sequence of tests/support/deciders.py, and resumed at every epoch.

    python -m tests.support.programs.keras3_stack
    -> @@{"checked": N, "differ": [...], "resumed_differ": [...], "reductions": N}
"""

from __future__ import annotations

import os


def main() -> None:
    os.environ["KERAS_BACKEND"] = "jax"  # before Keras 3 is first imported
    from service.engines.keras_jax.callbacks import get_lr
    from tests.support.deciders import PARAMETER_SETS, metric_sequence, spec_with
    from tests.support.keras3 import run_stack, stock_replay, tiny_model
    from tests.support.project import say_json

    differ, checked = [], 0
    for overrides in PARAMETER_SETS:
        for seed in (1, 2, 3):
            spec, sequence = spec_with(*overrides), metric_sequence(seed)
            trace, _, _ = run_stack(spec, sequence)
            lrs, stop_epoch, _ = stock_replay(spec, sequence)
            mine = ([d.lr_after for d in trace], trace[-1].epoch if trace[-1].stop else None)
            checked += 1
            if mine != (lrs, stop_epoch):
                differ.append([list(overrides), seed, mine, [lrs, stop_epoch]])

    spec = spec_with("reduce_lr={monitor: val_accuracy, factor: 0.5, patience: 2, cooldown: 2}",
                     "early_stopping={monitor: val_accuracy, patience: 5, restore_best_weights: true}")
    sequence = metric_sequence(5, epochs=20)
    full, _, _ = run_stack(spec, sequence)

    def key(trace: list) -> list:
        return [(d.epoch, d.lr_after, d.stop, d.plateau_wait, d.stopping_wait) for d in trace]

    resumed_differ = []
    for k in range(1, len(full)):
        first, deciders, model = run_stack(spec, sequence[:k])
        rest, _, _ = run_stack(spec, sequence, model=tiny_model(get_lr(model)), state=deciders.state_dicts(), start=k)
        if key(first + rest) != key(full):
            resumed_differ.append(k)
    say_json({"checked": checked, "differ": differ, "resumed_differ": resumed_differ,
              "reductions": sum(d.reduced for d in full)})


if __name__ == "__main__":
    main()
