"""A run's folder, OUTPUT/NAME: whose run it holds, and whether this run can write there.

A name is not an identity: the same name trained with other settings is another run. Before a
run trains, `check_same_spec` compares its resolved spec with the `spec.yaml` the folder holds
(of a finished or an interrupted run) and refuses, in one line naming every changed field, to
hand back or resume a run of different settings. `check_writable` finds an unusable output
location before Ray starts. Neither needs Ray or TensorFlow.

Example::

    check_same_spec(spec)   # RunFolderError: results/seed: holds a run of another spec (training.epochs 5 -> 30); ...
    check_writable(Path("results/seed"), "results/seed/checkpoints")
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from service.checkpoints import resume
from service.errors import BadInput
from service.spec import TrainSpec

SPEC_FILE = "spec.yaml"
# Fields that say where or how patiently a run happens, not what it computes: they may change
# between an interrupted run and its resume (`tracking`: where it is logged, not what it computes).
NOT_IDENTITY = ("output", "scaling.max_failures", "scaling.resources_timeout_s", "tracking")


class RunFolderError(BadInput):
    """The run's folder cannot be used as asked (exit 2, before anything starts)."""


@dataclasses.dataclass(frozen=True)
class RunPaths:
    """Where one run's things are: computed once from its spec (`RunPaths.of`), used by everyone."""

    out_dir: Path  # OUTPUT/NAME: the run's files (spec.yaml, history.csv, summary.json, ...)
    storage: str   # Ray Train's storage_path: scaling.storage_path (a URI, maybe), else OUTPUT/NAME/checkpoints
    name: str

    @classmethod
    def of(cls, spec: TrainSpec) -> "RunPaths":
        out_dir = Path(spec.output) / spec.name
        # Absolute: Ray Train takes a relative storage_path as relative to its own folder.
        return cls(out_dir, spec.scaling.storage_path or str((out_dir / "checkpoints").resolve()), spec.name)

    @property
    def checkpoints_dir(self) -> Path:
        """STORAGE/NAME: the folder Ray Train keeps this run's epoch checkpoints in."""
        return Path(self.storage, self.name)


# ---------------------------------------------------------------------------------------------
# Identity


def _render(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (dict, list)):
        return yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10**6).strip()
    return str(value)


def spec_changes(old: dict, new: dict, prefix: str = "", ignore: tuple[str, ...] = NOT_IDENTITY) -> list[str]:
    """`field old -> new` for every field that differs, in the new spec's order; a section turned
    on or off is one entry (`reduce_lr null -> {...}`)."""
    changes = []
    for key in dict.fromkeys([*new, *old]):
        field = f"{prefix}{key}"
        before, after = old.get(key, "(absent)"), new.get(key, "(absent)")
        if field in ignore or before == after:
            continue
        if isinstance(before, dict) and isinstance(after, dict):
            changes += spec_changes(before, after, f"{field}.", ignore)
        else:
            changes.append(f"{field} {_render(before)} -> {_render(after)}")
    return changes


def stored_spec(out_dir: Path) -> dict:
    """The folder's spec.yaml as the current code resolves it (defaults filled in)."""
    raw = yaml.safe_load((out_dir / SPEC_FILE).read_text()) or {}
    try:
        return TrainSpec.model_validate(raw).model_dump(mode="json")
    except ValidationError:  # written by another version of plateau: compare what is there
        return raw


def holds_a_run(spec: TrainSpec) -> bool:
    """Whether the folder holds a run worth keeping: finished, or with a trained epoch."""
    paths = RunPaths.of(spec)
    out = paths.out_dir
    return ((out / "summary.json").exists() or (out / "history.csv").exists()
            or resume.latest(paths.checkpoints_dir)[0] is not None)


def check_same_spec(spec: TrainSpec) -> None:
    """Raise RunFolderError if OUTPUT/NAME holds a run (finished or interrupted) of another spec."""
    out = RunPaths.of(spec).out_dir
    if not (out / SPEC_FILE).exists() or not holds_a_run(spec):
        return
    changes = spec_changes(stored_spec(out), spec.model_dump(mode="json"))
    if changes:
        raise RunFolderError(f"{out} holds a run of another spec ({', '.join(changes)}); use --fresh to "
                             f"discard it, or --name to train this spec under another name")


def state_line(spec: TrainSpec) -> str:
    """What `plateau train` would do with the folder, in words (`resume.CheckpointsDamaged`
    when it would refuse to resume: no checkpoint can be read)."""
    paths = RunPaths.of(spec)
    out = paths.out_dir
    if (out / "summary.json").exists():
        return f"{out}: finished; train says so and hands back its result (--fresh trains it again)"
    point = resume.find_resume_point(paths.checkpoints_dir, spec.model.weight_shapes())
    if point.damaged:
        epochs = ", ".join(str(epoch) for epoch, _, _ in point.damaged)
        return (f"{out}: interrupted; its checkpoint of epoch {epochs} cannot be read, so train sets it aside "
                f"and resumes after epoch {point.epoch}")
    if point.epoch:
        return f"{out}: interrupted after epoch {point.epoch}; train resumes it from its last checkpoint"
    return f"{out}: a new run"


# ---------------------------------------------------------------------------------------------
# Can the run write there?


def check_writable(*folders: Path | str) -> None:
    """Create each local folder and a file in it (a URI is the storage layer's business)."""
    for folder in folders:
        if "://" in str(folder):
            continue
        try:
            Path(folder).mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".plateau-probe-"):
                pass
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise RunFolderError(f"cannot write the run's folder {folder} ({reason}); choose a writable "
                                 f"place with --output (or the spec's output)") from None


def check_could_write(*folders: Path | str) -> None:
    """`check_writable`'s verdict without creating anything (what `plateau check` uses): the
    nearest folder that exists must be a writable directory."""
    import errno
    import os

    for folder in folders:
        if "://" in str(folder):
            continue
        here = Path(folder).absolute()
        while not here.exists() and here != here.parent:
            here = here.parent
        problem = None
        if not here.is_dir():
            problem = os.strerror(errno.ENOTDIR)
        elif not os.access(here, os.W_OK | os.X_OK):
            problem = os.strerror(errno.EACCES)
        if problem:
            raise RunFolderError(f"cannot write the run's folder {folder} ({problem}); choose a "
                                 f"writable place with --output (or the spec's output)")
