"""The checkpoint layout: what one epoch's checkpoint holds, how it is written and read back,
and which checkpoint a run resumes from. The only module that knows these files.

An epoch checkpoint is a directory (Ray Train merges what every rank put in it):

    weights.npz          arrays keyed by name, never by position:
                           model/<layer>/<weight>            e.g. model/0.dense/kernel
                           optimizer/iterations              Adam's step counter
                           optimizer/<slot>/model/<layer>/<weight>   Adam's m and v of that weight
                           optimizer/learning_rate           the current rate (not an optimizer variable)
                           best/<layer>/<weight>             EarlyStopping's best weights, if it holds some
    state.json           {"epoch": E, "callbacks": {"reduce_lr": {...}, "early_stopping": {...}}}
    trace-rank<R>.jsonl  rank R's reports of every epoch so far (metrics and decision record)

Ray Train's own record of a run, `STORAGE/NAME/checkpoint_manager_snapshot.json`, names the
latest checkpoint: the one Ray Train hands back on a restart, and `latest` reads it.

Example::

    save(directory, model, epoch=3, callbacks={"reduce_lr": rlr.state_dict()})
    restored = restore(directory, model)        # inside the strategy's scope
    restored.epoch, restored.callbacks["reduce_lr"]["wait"]
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any, Optional

import numpy as np

WEIGHTS_FILE = "weights.npz"
STATE_FILE = "state.json"
TRACE_FILE = "trace-rank{rank}.jsonl"
RAY_SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"
# The one array-valued piece of callback state; it is stored in weights.npz, not state.json.
BEST_WEIGHTS = "best_weights"


@dataclasses.dataclass
class Restored:
    """What a checkpoint gives back besides the model and optimizer it restores in place."""

    epoch: int = 0  # the last finished epoch (1-based); 0 = a fresh start
    callbacks: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Names of the arrays


def _weight_names(model) -> list[str]:
    """A stable name per model weight, in `model.weights` order: `<layer index>.<layer kind>/<weight>`.

    Keras's own names (dense_3/kernel:0) depend on how many layers the process built before.
    """
    names = []
    for index, layer in enumerate(model.layers):
        kind = type(layer).__name__.lower()
        for weight in layer.weights:
            short = weight.name.split("/")[-1].split(":")[0]
            names.append(f"{index}.{kind}/{short}")
    return names


def _optimizer_names(model) -> list[str]:
    """A stable name per optimizer variable: its step counter, and each slot by the weight it
    belongs to (tf_keras names a slot `[scope/]<slot>/<the weight's name>`)."""
    by_keras_name = dict(zip((w.name for w in model.weights), _weight_names(model)))
    optimizer = model.optimizer
    names = []
    for variable in optimizer.variables:
        if variable is optimizer.iterations:
            names.append("optimizer/iterations")
            continue
        weight = next(k for k in by_keras_name if variable.name.endswith("/" + k))
        slot = variable.name[: -len(weight) - 1].split("/")[-1]
        names.append(f"optimizer/{slot}/model/{by_keras_name[weight]}")
    return names


# ---------------------------------------------------------------------------------------------
# Save and restore


def state_arrays(model) -> dict[str, np.ndarray]:
    """Everything training carries from step to step, by stable name, in a fixed order: the
    model's weights, the optimizer's step counter and slots, and the learning rate."""
    import tf_keras as keras

    arrays = {f"model/{n}": w for n, w in zip(_weight_names(model), model.get_weights())}
    arrays.update({n: v.numpy() for n, v in zip(_optimizer_names(model), model.optimizer.variables)})
    rate = keras.backend.get_value(model.optimizer.learning_rate)
    arrays["optimizer/learning_rate"] = np.asarray(rate, dtype=np.float32)
    return arrays


def save(directory, model, epoch: int, callbacks: dict[str, dict[str, Any]]) -> None:
    """Write `model`'s weights, its optimizer (state and learning rate), the epoch and the
    callbacks' state (`{name: state_dict}`; a `best_weights` list goes into the arrays)."""
    arrays = state_arrays(model)
    plain: dict[str, dict[str, Any]] = {}
    for name, state in callbacks.items():
        state = dict(state)
        if BEST_WEIGHTS in state:
            best = state.pop(BEST_WEIGHTS)
            state["has_best_weights"] = best is not None
            if best is not None:
                arrays.update({f"best/{n}": w for n, w in zip(_weight_names(model), best)})
        plain[name] = state
    np.savez(Path(directory, WEIGHTS_FILE), **arrays)
    Path(directory, STATE_FILE).write_text(json.dumps({"epoch": epoch, "callbacks": plain}))


def restore(directory, model) -> Restored:
    """Put a checkpoint's weights and optimizer state into `model`; return the epoch and the
    callbacks' state (with `best_weights` back in it).

    Call inside the strategy's scope: Adam creates its slots lazily, and they must be built as
    mirrored variables before they can be assigned.
    """
    state = json.loads(Path(directory, STATE_FILE).read_text())
    names = _weight_names(model)
    with np.load(Path(directory, WEIGHTS_FILE)) as saved:
        model.set_weights([saved[f"model/{n}"] for n in names])
        model.optimizer.build(model.trainable_variables)
        for name, variable in zip(_optimizer_names(model), model.optimizer.variables):
            variable.assign(saved[name])
        model.optimizer.learning_rate.assign(saved["optimizer/learning_rate"])
        callbacks = {}
        for cb_name, cb_state in state["callbacks"].items():
            cb_state = dict(cb_state)
            if cb_state.pop("has_best_weights", False):
                cb_state[BEST_WEIGHTS] = [saved[f"best/{n}"] for n in names]
            callbacks[cb_name] = cb_state
    return Restored(epoch=int(state["epoch"]), callbacks=callbacks)


def load_weights(directory, model) -> None:
    """Only the model's weights of a checkpoint (for evaluating an epoch after the run)."""
    with np.load(Path(directory, WEIGHTS_FILE)) as saved:
        model.set_weights([saved[f"model/{n}"] for n in _weight_names(model)])


def epoch_of(directory) -> int:
    return int(json.loads(Path(directory, STATE_FILE).read_text())["epoch"])


# ---------------------------------------------------------------------------------------------
# Traces: every rank's reports, carried by the checkpoint


def write_trace(directory, rank: int, trace: list[dict]) -> None:
    """A rank's reports so far (metrics and decision record per epoch)."""
    Path(directory, TRACE_FILE.format(rank=rank)).write_text("".join(json.dumps(m) + "\n" for m in trace))


def read_traces(directory) -> dict[int, list[dict]]:
    """Every rank's trace in a checkpoint, by rank."""
    pattern = re.compile(TRACE_FILE.replace("{rank}", r"(\d+)").replace(".", r"\."))
    found = (pattern.fullmatch(p.name) for p in Path(directory).iterdir())
    return {int(m.group(1)): read_trace(directory, int(m.group(1))) for m in found if m}


def read_trace(directory, rank: int) -> list[dict]:
    """What `write_trace` wrote; empty when the checkpoint has none for that rank."""
    path = Path(directory, TRACE_FILE.format(rank=rank))
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------
# Finding checkpoints of a run


def latest(run_dir: Path) -> tuple[Optional[int], Optional[Path]]:
    """(epoch, directory) of the checkpoint Ray Train will resume the run in `run_dir` from.

    Read from Ray Train's own record of the run; (None, None) when there is none (or the storage
    is not a local path).
    """
    try:
        snapshot = json.loads(Path(run_dir, RAY_SNAPSHOT_FILE).read_text())
        found = snapshot.get("latest_checkpoint_result") or {}
        return int(found["metrics"]["epoch"]), Path(run_dir, found["checkpoint_dir_name"])
    except (OSError, ValueError, KeyError, TypeError):
        return None, None


def by_epoch(run_dir: Path) -> dict[int, Path]:
    """Every epoch checkpoint kept in `run_dir`, by epoch."""
    return {epoch_of(state.parent): state.parent for state in Path(run_dir).glob(f"checkpoint_*/{STATE_FILE}")}
