"""One epoch's checkpoint: what it holds, and how it is written and read back. The only module
that knows these files.

An epoch checkpoint is a directory (Ray Train merges what every rank put in it):

    weights.npz          arrays keyed by name, never by position:
                           model/<layer>/<weight>            e.g. model/0.dense/kernel
                           optimizer/iterations              Adam's step counter
                           optimizer/<slot>/model/<layer>/<weight>   Adam's m and v of that weight
                           optimizer/learning_rate           the current rate (not an optimizer variable)
                           best/<layer>/<weight>             EarlyStopping's best weights, if it holds some
    state.json           {"epoch": E, "callbacks": {"reduce_lr": {...}, "early_stopping": {...}},
                          "arrays": {"model/0.dense/kernel": {"shape": [784, 128], "dtype": "float32"}, ...}}
                         `arrays`, the manifest: every array of weights.npz with its shape and dtype,
                         whatever the model, so that a reader can tell a whole file from a damaged
                         one without knowing the model (checkpoints before it lack it)
    trace-rank<R>.jsonl  rank R's reports of every epoch so far (metrics and decision record)

Example::

    write(directory, arrays, weight_names(model), 3, callbacks)   # an engine's named arrays (its state.py)
    restored, arrays = read(directory, weight_names(model))
    restored.epoch, restored.callbacks["reduce_lr"]["wait"]
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # the driver reads checkpoints without TensorFlow
    import tf_keras as keras  # or Keras 3: only `layers`, `weights`, `set_weights` are used

WEIGHTS_FILE = "weights.npz"
STATE_FILE = "state.json"
TRACE_FILE = "trace-rank{rank}.jsonl"
# The one array-valued piece of callback state; it is stored in weights.npz, not state.json.
BEST_WEIGHTS = "best_weights"
# state.json's key of the manifest of weights.npz.
MANIFEST = "arrays"


@dataclasses.dataclass
class Restored:
    """What a checkpoint gives back besides the model and optimizer it restores in place."""

    epoch: int = 0  # the last finished epoch (1-based); 0 = a fresh start
    callbacks: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Names of the arrays


def weight_names(model: keras.Model) -> list[str]:
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


# ---------------------------------------------------------------------------------------------
# Save and restore


def write(directory: str | Path, arrays: dict[str, np.ndarray], weight_names: list[str], epoch: int,
          callbacks: dict[str, dict[str, Any]]) -> None:
    """Any engine's checkpoint: its named state `arrays` (the names above), the epoch and the
    callbacks' state; a `best_weights` list (in `weight_names` order) goes into the arrays."""
    arrays = dict(arrays)
    plain: dict[str, dict[str, Any]] = {}
    for name, state in callbacks.items():
        state = dict(state)
        if BEST_WEIGHTS in state:
            best = state.pop(BEST_WEIGHTS)
            state["has_best_weights"] = best is not None
            if best is not None:
                arrays.update({f"best/{n}": w for n, w in zip(weight_names, best)})
        plain[name] = state
    np.savez(Path(directory, WEIGHTS_FILE), **arrays)
    state = {"epoch": epoch, "callbacks": plain, MANIFEST: manifest(arrays)}
    Path(directory, STATE_FILE).write_text(json.dumps(state))


def manifest(arrays: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every array's shape and dtype, by name: `{"optimizer/iterations": {"shape": [], "dtype": "int64"}}`."""
    described = {}
    for name, array in arrays.items():
        array = np.asarray(array)
        described[name] = {"shape": list(array.shape), "dtype": str(array.dtype)}
    return described


def read(directory: str | Path, weight_names: list[str]) -> tuple[Restored, dict[str, np.ndarray]]:
    """Any engine's checkpoint: the epoch and the callbacks' state (with `best_weights` back in it,
    in `weight_names` order), and every named array, read whole."""
    state = json.loads(Path(directory, STATE_FILE).read_text())
    with np.load(Path(directory, WEIGHTS_FILE)) as saved:
        arrays = {name: saved[name] for name in saved.files}
    callbacks = {}
    for cb_name, cb_state in state["callbacks"].items():
        cb_state = dict(cb_state)
        if cb_state.pop("has_best_weights", False):
            cb_state[BEST_WEIGHTS] = [arrays[f"best/{n}"] for n in weight_names]
        callbacks[cb_name] = cb_state
    return Restored(epoch=int(state["epoch"]), callbacks=callbacks), arrays


def load_weights(directory: str | Path, model: keras.Model) -> None:
    """Only the model's weights of a checkpoint (for evaluating an epoch after the run)."""
    with np.load(Path(directory, WEIGHTS_FILE)) as saved:
        model.set_weights([saved[f"model/{n}"] for n in weight_names(model)])


def epoch_of(directory: str | Path) -> int:
    return int(json.loads(Path(directory, STATE_FILE).read_text())["epoch"])


# ---------------------------------------------------------------------------------------------
# Traces: every rank's reports, carried by the checkpoint


def write_trace(directory: str | Path, rank: int, trace: list[dict]) -> None:
    """A rank's reports so far (metrics and decision record per epoch)."""
    Path(directory, TRACE_FILE.format(rank=rank)).write_text("".join(json.dumps(m) + "\n" for m in trace))


def trace_ranks(directory: Path | str) -> list[int]:
    """The ranks whose traces a checkpoint holds."""
    pattern = re.compile(TRACE_FILE.replace("{rank}", r"(\d+)").replace(".", r"\."))
    found = (pattern.fullmatch(p.name) for p in Path(directory).iterdir())
    return sorted(int(m.group(1)) for m in found if m)


def read_traces(directory: str | Path) -> dict[int, list[dict]]:
    """Every rank's trace in a checkpoint, by rank."""
    return {rank: read_trace(directory, rank) for rank in trace_ranks(directory)}


def read_trace(directory: str | Path, rank: int) -> list[dict]:
    """What `write_trace` wrote; empty when the checkpoint has none for that rank."""
    path = Path(directory, TRACE_FILE.format(rank=rank))
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
