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
kept checkpoints and the latest one: the one Ray Train hands the workers on a restart, and
`latest` reads it. Before a run resumes, the driver reads its checkpoints newest first, every
file whole (`damage`, no TensorFlow), and `resume_point` sets the unreadable newer ones aside
(renamed `damaged-checkpoint_...`, dropped from Ray Train's record), so that the latest
checkpoint Ray Train hands the workers is the newest one that can be restored.

Example::

    write(directory, arrays, weight_names(model), 3, callbacks)   # an engine's named arrays (its state.py)
    restored, arrays = read(directory, weight_names(model))
    restored.epoch, restored.callbacks["reduce_lr"]["wait"]
    resume_point(checkpoints_dir, hidden_units=784, echo=print).epoch   # 2, if epoch 3's was truncated
"""

from __future__ import annotations

import dataclasses
import json
import re
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import numpy as np

from service.compat.ray import SNAPSHOT_FILE as RAY_SNAPSHOT_FILE
from service.errors import BadInput
from service.files import write_atomic

if TYPE_CHECKING:  # the driver reads checkpoints without TensorFlow
    import tf_keras as keras  # or Keras 3: only `layers`, `weights`, `set_weights` are used

WEIGHTS_FILE = "weights.npz"
STATE_FILE = "state.json"
TRACE_FILE = "trace-rank{rank}.jsonl"
# The one array-valued piece of callback state; it is stored in weights.npz, not state.json.
BEST_WEIGHTS = "best_weights"
# A checkpoint set aside because it cannot be read: `damaged-<its name>`, beside the others.
DAMAGED_PREFIX = "damaged-"


class CheckpointsDamaged(BadInput):
    """No checkpoint of an interrupted run can be read (exit 2, before anything starts)."""


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
    Path(directory, STATE_FILE).write_text(json.dumps({"epoch": epoch, "callbacks": plain}))


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


# ---------------------------------------------------------------------------------------------
# Finding checkpoints of a run


def latest(checkpoints_dir: Path) -> tuple[Optional[int], Optional[Path]]:
    """(epoch, directory) of the checkpoint Ray Train will resume the run in `checkpoints_dir` from.

    Read from Ray Train's own record of the run; (None, None) when there is none (or the storage
    is not a local path).
    """
    try:
        snapshot = json.loads(Path(checkpoints_dir, RAY_SNAPSHOT_FILE).read_text())
        found = snapshot.get("latest_checkpoint_result") or {}
        return int(found["metrics"]["epoch"]), Path(checkpoints_dir, found["checkpoint_dir_name"])
    except (OSError, ValueError, KeyError, TypeError):
        return None, None


def by_epoch(checkpoints_dir: Path) -> dict[int, Path]:
    """Every epoch checkpoint kept in `checkpoints_dir`, by epoch."""
    return {epoch_of(state.parent): state.parent for state in Path(checkpoints_dir).glob(f"checkpoint_*/{STATE_FILE}")}


# ---------------------------------------------------------------------------------------------
# Damaged checkpoints


def expected_shapes(hidden_units: int) -> dict[str, tuple[int, ...]]:
    """Every array `restore` reads from a checkpoint of the seed model (784 -> hidden_units ->
    10, Adam), by name, with its shape; `best/...` comes on top when EarlyStopping kept best
    weights. No TensorFlow; tests/test_checkpoint_damage.py holds it against `state_arrays` of
    a built model."""
    weights = {"0.dense/kernel": (784, hidden_units), "0.dense/bias": (hidden_units,),
               "2.dense/kernel": (hidden_units, 10), "2.dense/bias": (10,)}
    arrays: dict[str, tuple[int, ...]] = {f"model/{n}": s for n, s in weights.items()}
    arrays["optimizer/iterations"] = ()
    for slot in ("m", "v"):  # Adam's moments
        arrays.update({f"optimizer/{slot}/model/{n}": s for n, s in weights.items()})
    arrays["optimizer/learning_rate"] = ()
    return arrays


def _state_damage(directory: Path, epoch: int) -> tuple[Optional[str], bool]:
    """(what is wrong with state.json, or None; whether it says there are best weights)."""
    try:
        state = json.loads(Path(directory, STATE_FILE).read_text())
        callbacks = state["callbacks"]
        best = any(cb.get("has_best_weights") for cb in callbacks.values())
        if int(state["epoch"]) != epoch:
            return f"{STATE_FILE} is of epoch {state['epoch']}, not {epoch}", best
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return f"{STATE_FILE}: {_why(exc)}", False
    return None, best


def _weights_damage(directory: Path, hidden_units: int, best: bool) -> Optional[str]:
    """What is wrong with weights.npz (every array read whole, so a bad CRC shows), or None."""
    wanted = expected_shapes(hidden_units)
    if best:
        wanted.update({f"best/{n[len('model/'):]}": s for n, s in wanted.items() if n.startswith("model/")})
    try:
        with np.load(Path(directory, WEIGHTS_FILE)) as saved:
            shapes = {name: saved[name].shape for name in saved.files}
    except (OSError, ValueError, EOFError, KeyError, TypeError, AttributeError, zipfile.BadZipFile) as exc:
        return f"{WEIGHTS_FILE}: {_why(exc)}"
    for name, shape in wanted.items():
        if name not in shapes:
            return f"{WEIGHTS_FILE} has no array {name}"
        if tuple(shapes[name]) != shape:
            return f"{WEIGHTS_FILE}: {name} has shape {tuple(shapes[name])}, not {shape}"
    return None


def _why(exc: BaseException) -> str:
    """An error of reading a file, in words: a missing key says `no 'key'`."""
    if isinstance(exc, KeyError):
        return f"no {exc.args[0]!r}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = " ".join(str(exc).split())
    return text if text else type(exc).__name__


def damage(directory: Path, epoch: int, hidden_units: int) -> Optional[str]:
    """Why the checkpoint of `epoch` in `directory` cannot be restored, in words; None if it can.

    Reads every file whole: state.json (and that it is of `epoch`), every array of weights.npz
    (and that the model's, Adam's and any best weights are there with the model's shapes), and
    every rank's trace."""
    if not Path(directory).is_dir():
        return "its folder is missing"
    problem, best = _state_damage(directory, epoch)
    return problem or _weights_damage(directory, hidden_units, best) or _traces_damage(directory)


def _traces_damage(directory: Path) -> Optional[str]:
    """What is wrong with the first rank's trace that cannot be read, or None."""
    for rank in trace_ranks(directory):
        try:
            read_trace(directory, rank)
        except (OSError, ValueError) as exc:
            return f"{TRACE_FILE.format(rank=rank)}: {_why(exc)}"
    return None


@dataclasses.dataclass
class ResumePoint:
    """Where a run resumes: the newest checkpoint that can be read, and the newer ones that cannot."""

    epoch: Optional[int] = None
    directory: Optional[Path] = None
    damaged: list[tuple[int, str, str]] = dataclasses.field(default_factory=list)  # (epoch, dir name, why)


def _read_snapshot(checkpoints_dir: Path) -> Optional[dict]:
    """Ray Train's record of the run; None when there is none. CheckpointsDamaged when it
    cannot be read: Ray Train could not resume the run either."""
    path = Path(checkpoints_dir, RAY_SNAPSHOT_FILE)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CheckpointsDamaged(f"cannot read {path} ({exc.strerror or exc}); use --fresh to train the run "
                                 f"again from the start") from None
    try:
        snapshot = json.loads(text)
        _newest_first(snapshot)  # every kept checkpoint has its epoch and folder
        return snapshot
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointsDamaged(f"{path} is damaged ({_why(exc)}), so the run cannot resume; use --fresh to "
                                 f"train it again from the start") from None


def _newest_first(snapshot: dict) -> list[tuple[int, str]]:
    """(epoch, dir name) of every kept checkpoint, the latest first, then by epoch."""
    kept = {r["checkpoint_dir_name"]: int(r["metrics"]["epoch"]) for r in snapshot["checkpoint_results"]}
    latest = (snapshot.get("latest_checkpoint_result") or {}).get("checkpoint_dir_name")
    return sorted(((e, n) for n, e in kept.items()), key=lambda item: (item[1] != latest, -item[0]))


def find_resume_point(checkpoints_dir: Path, hidden_units: int) -> ResumePoint:
    """The newest checkpoint of the run in `checkpoints_dir` that can be read (changes nothing).

    CheckpointsDamaged when the run has checkpoints and none of them can be read."""
    snapshot = _read_snapshot(checkpoints_dir)
    if snapshot is None:
        return ResumePoint()
    point = ResumePoint()
    for epoch, name in _newest_first(snapshot):
        why = damage(Path(checkpoints_dir, name), epoch, hidden_units)
        if why is None:
            point.epoch, point.directory = epoch, Path(checkpoints_dir, name)
            return point
        point.damaged.append((epoch, name, why))
    if point.damaged:
        found = "; ".join(f"epoch {e}: {why}" for e, _, why in point.damaged)
        raise CheckpointsDamaged(f"no checkpoint in {checkpoints_dir} can be read ({found}); use --fresh to train the "
                                 f"run again from the start")
    return point


def _without(snapshot: dict, names: set[str], latest: str) -> dict:
    """Ray Train's record less the checkpoints `names`, with `latest` as its latest."""
    kept = [i for i, r in enumerate(snapshot["checkpoint_results"]) if r["checkpoint_dir_name"] not in names]
    pending = [i for i, r in enumerate(snapshot.get("pending_training_results") or [])
               if r["checkpoint_dir_name"] not in names]
    out = dict(snapshot)
    out["checkpoint_results"] = [snapshot["checkpoint_results"][i] for i in kept]
    out["checkpoint_report_indices"] = [snapshot["checkpoint_report_indices"][i] for i in kept]
    out["latest_checkpoint_result"] = next(r for r in out["checkpoint_results"] if r["checkpoint_dir_name"] == latest)
    if "pending_training_results" in snapshot:
        out["pending_training_results"] = [snapshot["pending_training_results"][i] for i in pending]
        out["pending_validation_specs"] = [snapshot["pending_validation_specs"][i] for i in pending]
    for key in ("validated_checkpoint_dir_names", "timed_out_validation_checkpoint_dir_names",
                "failed_validation_checkpoint_dir_names"):
        if key in snapshot:
            out[key] = [n for n in snapshot[key] if n not in names]
    return out


def resume_point(checkpoints_dir: Path, hidden_units: int, echo: Callable[[str], None]) -> ResumePoint:
    """`find_resume_point`, and the damaged newer checkpoints set aside, with a line each: each
    renamed `damaged-<name>` and dropped from Ray Train's record, whose latest becomes the
    checkpoint found, so that the workers restore that one."""
    point = find_resume_point(checkpoints_dir, hidden_units)
    if not point.damaged:
        return point
    for epoch, name, why in point.damaged:
        aside = Path(checkpoints_dir, DAMAGED_PREFIX + name)
        try:
            if Path(checkpoints_dir, name).exists():
                Path(checkpoints_dir, name).rename(aside)
        except OSError as exc:
            raise CheckpointsDamaged(f"the checkpoint of epoch {epoch} in {checkpoints_dir} cannot be read ({why}) nor set "
                                     f"aside ({exc.strerror or exc}); move it away, or use --fresh to train the run "
                                     f"again from the start") from None
        where = f"set aside as {aside}" if aside.exists() else "dropped from Ray Train's record"
        echo(f"warning: the checkpoint of epoch {epoch} cannot be read ({why}); {where}; the run resumes "
             f"from the checkpoint of epoch {point.epoch}")
    snapshot = _read_snapshot(checkpoints_dir)
    write_atomic(Path(checkpoints_dir, RAY_SNAPSHOT_FILE),
                 json.dumps(_without(snapshot, {n for _, n, _ in point.damaged}, point.directory.name)))
    return point
