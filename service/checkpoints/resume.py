"""Which checkpoint an interrupted run resumes from, read by the driver before Ray starts (no
TensorFlow).

Ray Train's own record of a run (`service/compat/ray.py`: `checkpoint_manager_snapshot.json` in
STORAGE/NAME) names the kept checkpoints and the latest one: the one Ray Train hands the workers on
a restart, and `latest` reads it. Before a run resumes, the driver reads its checkpoints newest
first, every file whole and each array against the manifest the checkpoint carries, whatever the
model (`damage`), and `resume_point` sets the unreadable newer ones aside
(renamed `damaged-checkpoint_...`, dropped from Ray Train's record), so that the latest checkpoint
Ray Train hands the workers is the newest one that can be restored.

Example::

    resume_point(checkpoints_dir, spec.model.weight_shapes(), echo=print).epoch   # 2, if epoch 3's was truncated
    latest(checkpoints_dir)                                              # (2, Path(".../checkpoint_..."))
"""

from __future__ import annotations

import dataclasses
import json
import zipfile
from pathlib import Path
from typing import Callable, Mapping, Optional

import numpy as np

from service.checkpoints.layout import MANIFEST, STATE_FILE, TRACE_FILE, WEIGHTS_FILE, epoch_of, read_trace, trace_ranks
from service.compat import ray as compat_ray
from service.compat.ray import SNAPSHOT_FILE as RAY_SNAPSHOT_FILE
from service.errors import BadInput

# A checkpoint set aside because it cannot be read: `damaged-<its name>`, beside the others.
DAMAGED_PREFIX = "damaged-"
Shapes = Mapping[str, tuple[int, ...]]  # a model's weights' shapes by name: {"0.dense/kernel": (784, 128), ...}
Manifest = dict[str, tuple[tuple[int, ...], str]]  # weights.npz's arrays: name -> (shape, dtype)


class CheckpointsDamaged(BadInput):
    """No checkpoint of an interrupted run can be read (exit 2, before anything starts)."""


# ---------------------------------------------------------------------------------------------
# Finding checkpoints of a run


def latest(checkpoints_dir: Path) -> tuple[Optional[int], Optional[Path]]:
    """(epoch, directory) of the checkpoint Ray Train will resume the run in `checkpoints_dir` from.

    Read from Ray Train's own record of the run; (None, None) when there is none (or the storage
    is not a local path).
    """
    try:
        name, metrics = compat_ray.latest_checkpoint(compat_ray.read_snapshot(checkpoints_dir) or {})
        return int(metrics["epoch"]), Path(checkpoints_dir, name)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None, None


def by_epoch(checkpoints_dir: Path) -> dict[int, Path]:
    """Every epoch checkpoint kept in `checkpoints_dir`, by epoch."""
    return {epoch_of(state.parent): state.parent for state in Path(checkpoints_dir).glob(f"checkpoint_*/{STATE_FILE}")}


# ---------------------------------------------------------------------------------------------
# Damaged checkpoints


def _state_damage(directory: Path, epoch: int) -> tuple[Optional[str], bool, Optional[Manifest]]:
    """(what is wrong with state.json, or None; whether it says there are best weights; its
    manifest of weights.npz, None in a checkpoint written before manifests)."""
    try:
        state = json.loads(Path(directory, STATE_FILE).read_text())
        best = any(cb.get("has_best_weights") for cb in state["callbacks"].values())
        listed = state.get(MANIFEST)
        manifest = None if listed is None else {name: (tuple(int(n) for n in array["shape"]), str(array["dtype"]))
                                                for name, array in listed.items()}
        if int(state["epoch"]) != epoch:
            return f"{STATE_FILE} is of epoch {state['epoch']}, not {epoch}", best, manifest
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return f"{STATE_FILE}: {_why(exc)}", False, None
    return None, best, manifest


def _weights_damage(directory: Path, best: bool, manifest: Optional[Manifest], model: Optional[Shapes]) -> Optional[str]:
    """What is wrong with weights.npz, or None: every array read whole (so a bad CRC shows) and
    held against the manifest; then the model's weights against the shapes the run's spec builds."""
    try:
        with np.load(Path(directory, WEIGHTS_FILE)) as saved:
            found = {name: (tuple(array.shape), str(array.dtype)) for name in saved.files for array in [saved[name]]}
    except (OSError, ValueError, EOFError, KeyError, TypeError, AttributeError, zipfile.BadZipFile) as exc:
        return f"{WEIGHTS_FILE}: {_why(exc)}"
    if manifest is None:  # written before manifests: at least the best weights of every model weight
        manifest = {f"best/{n[len('model/'):]}": found[n] for n in found if best and n.startswith("model/")}
    wanted = [(name, shape, dtype) for name, (shape, dtype) in manifest.items()]
    wanted += [(f"model/{weight}", tuple(shape), None) for weight, shape in (model or {}).items()]
    return next(filter(None, (_unlike(found, *array) for array in wanted)), None)


def _unlike(found: Manifest, name: str, shape: tuple[int, ...], dtype: Optional[str]) -> Optional[str]:
    """Why array `name` of weights.npz is not one of `shape` (and `dtype`, unless None), or None."""
    if name not in found:
        return f"{WEIGHTS_FILE} has no array {name}"
    if found[name][0] != shape:
        return f"{WEIGHTS_FILE}: {name} has shape {found[name][0]}, not {shape}"
    if dtype is not None and found[name][1] != dtype:
        return f"{WEIGHTS_FILE}: {name} is {found[name][1]}, not {dtype}"
    return None


def _why(exc: BaseException) -> str:
    """An error of reading a file, in words: a missing key says `no 'key'`."""
    if isinstance(exc, KeyError):
        return f"no {exc.args[0]!r}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = " ".join(str(exc).split())
    return text if text else type(exc).__name__


def damage(directory: Path, epoch: int, model: Optional[Shapes] = None) -> Optional[str]:
    """Why the checkpoint of `epoch` in `directory` cannot be restored, in words; None if it can.

    Reads every file whole: state.json (and that it is of `epoch`), every array of weights.npz
    (and that each array its manifest lists is there, of that shape and dtype, whatever the
    model), and every rank's trace. `model`: the model weights' shapes the run's spec builds
    (`ModelSpec.weight_shapes`), which the checkpoint's must be; None compares with none.

        damage(directory, 4, ModelSpec(hidden_units=9).weight_shapes())
        # 'weights.npz: model/0.dense/kernel has shape (784, 8), not (784, 9)'
    """
    if not Path(directory).is_dir():
        return "its folder is missing"
    problem, best, manifest = _state_damage(directory, epoch)
    return problem or _weights_damage(directory, best, manifest, model) or _traces_damage(directory)


def _traces_damage(directory: Path) -> Optional[str]:
    """What is wrong with the first rank's trace that cannot be read, or None."""
    for rank in trace_ranks(directory):
        try:
            read_trace(directory, rank)
        except (OSError, ValueError) as exc:
            return f"{TRACE_FILE.format(rank=rank)}: {_why(exc)}"
    return None


# ---------------------------------------------------------------------------------------------
# Where a run resumes


@dataclasses.dataclass
class ResumePoint:
    """Where a run resumes: the newest checkpoint that can be read, and the newer ones that cannot."""

    epoch: Optional[int] = None
    directory: Optional[Path] = None
    damaged: list[tuple[int, str, str]] = dataclasses.field(default_factory=list)  # (epoch, dir name, why)


def _kept_newest_first(checkpoints_dir: Path) -> Optional[list[tuple[int, str]]]:
    """(epoch, dir name) of every checkpoint Ray Train's record keeps, its latest first, then by
    epoch; None when there is no record. CheckpointsDamaged when it cannot be read: Ray Train
    could not resume the run either."""
    path = Path(checkpoints_dir, RAY_SNAPSHOT_FILE)
    try:
        snapshot = compat_ray.read_snapshot(checkpoints_dir)
        if snapshot is None:
            return None
        kept = {name: int(metrics["epoch"]) for name, metrics in compat_ray.kept_checkpoints(snapshot)}
        latest_name = (compat_ray.latest_checkpoint(snapshot) or (None, {}))[0]
    except OSError as exc:
        raise CheckpointsDamaged(f"cannot read {path} ({exc.strerror or exc}); use --fresh to train the run "
                                 f"again from the start") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointsDamaged(f"{path} is damaged ({_why(exc)}), so the run cannot resume; use --fresh to "
                                 f"train it again from the start") from None
    return sorted(((e, n) for n, e in kept.items()), key=lambda item: (item[1] != latest_name, -item[0]))


def find_resume_point(checkpoints_dir: Path, model: Optional[Shapes]) -> ResumePoint:
    """The newest checkpoint of the run in `checkpoints_dir` that can be read (changes nothing).

    CheckpointsDamaged when the run has checkpoints and none of them can be read."""
    kept = _kept_newest_first(checkpoints_dir)
    point = ResumePoint()
    for epoch, name in kept or []:
        why = damage(Path(checkpoints_dir, name), epoch, model)
        if why is None:
            point.epoch, point.directory = epoch, Path(checkpoints_dir, name)
            return point
        point.damaged.append((epoch, name, why))
    if point.damaged:
        found = "; ".join(f"epoch {e}: {why}" for e, _, why in point.damaged)
        raise CheckpointsDamaged(f"no checkpoint in {checkpoints_dir} can be read ({found}); use --fresh to train the "
                                 f"run again from the start")
    return point


def resume_point(checkpoints_dir: Path, model: Optional[Shapes], echo: Callable[[str], None]) -> ResumePoint:
    """`find_resume_point`, and the damaged newer checkpoints set aside, with a line each: each
    renamed `damaged-<name>` and dropped from Ray Train's record, whose latest becomes the
    checkpoint found, so that the workers restore that one."""
    point = find_resume_point(checkpoints_dir, model)
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
    compat_ray.drop_from_snapshot(checkpoints_dir, {n for _, n, _ in point.damaged}, point.directory.name)
    return point
