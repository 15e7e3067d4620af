"""The grid of a study: which settings it compares, and the train spec of every trial.

``grid`` maps a dotted train-spec field to the list of values to try; the settings are the
cartesian product of the lists, in the order the fields are written. A value is applied with
the same rules as ``--set``: ``reduce_lr.factor: [0.1, 0.5]`` sets one field, a mapping
replaces a whole section (``reduce_lr: [{factor: 0.1, patience: 1}]``), and ``null`` turns a
section off (``reduce_lr: [null, {...}]``). Sections are applied before the fields inside
them, whatever the order they are written in, so a section value is the starting point that
the finer axes then vary. When a setting turns a section off, the axes inside that section
mean nothing: they are dropped from that setting and the duplicates collapse into one, so

    grid:
      reduce_lr: [null, {monitor: val_accuracy}]
      reduce_lr.factor: [0.1, 0.5]

gives three settings: ``reduce_lr=off``, ``reduce_lr.factor=0.1`` and ``reduce_lr.factor=0.5``.
An axis with a single value (``data.validation: [holdout]``) sets that field for every trial;
it is a column of comparison.csv but not part of the settings' names.

The baseline is the grid's FIRST setting (the first value of every axis); put the reference
arm first. Each trial is named ``STUDY-SLUG-sSEED`` and trains with ``training.seed`` = the seed.

Example::

    settings = expand_settings({"reduce_lr": [None, {"monitor": "val_accuracy"}]})
    [s.label for s in settings]          # ['reduce_lr=off', 'reduce_lr=on']
    trials = expand(spec)                # settings x seeds, every train spec validated
"""

from __future__ import annotations

import copy
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel

from service.seeding import SeedPlan
from service.spec import CompareSpec, SpecError, TrainSpec, set_path, validate_train

# Fields a grid may not vary: the study sets them for every trial.
RESERVED = {
    "kind": "every trial is a train run",
    "name": "trial names are made from the study name, the setting and the seed",
    "output": "trials are written under OUTPUT/STUDY/trials",
    "training.seed": "list the seeds under `seeds:`",
}


@dataclass
class Setting:
    """One point of the grid: the values applied (field -> value, grid order) and its names."""

    index: int
    values: dict[str, Any]
    label: str  # human readable: reduce_lr.factor=0.2,reduce_lr.patience=2
    slug: str   # the same, fit for a file name: factor-0.2_patience-2
    columns: dict[str, str]  # grid field -> the value as shown in comparison.csv ("" if dropped)
    full: str = ""  # every value applied, one-value axes included (for error messages)


@dataclass
class Trial:
    setting: Setting
    seed: int
    name: str
    spec: TrainSpec


def _is_section(dotted: str) -> bool:
    """Whether `dotted` names a section of the train spec (reduce_lr, data, ...), not a value."""
    model: Any = TrainSpec
    for part in dotted.split("."):
        field_info = getattr(model, "model_fields", {}).get(part)
        if field_info is None:
            return False
        nested = [a for a in getattr(field_info.annotation, "__args__", (field_info.annotation,))
                  if isinstance(a, type) and issubclass(a, BaseModel)]
        model = nested[0] if nested else None
    return model is not None


def _render(value: Any, differing: Optional[list[str]] = None, section: bool = True) -> str:
    """A grid value for people: a null section -> off, a section -> on (or the keys that differ)."""
    if value is None:
        return "off" if section else "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict):
        if not differing:
            return "on"
        return "{" + ", ".join(f"{k}: {_render(value.get(k))}" for k in differing) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_render(v) for v in value) + "]"
    return str(value)


def _differing_keys(values: list[Any]) -> list[str]:
    """The keys whose values differ among an axis's mapping values (to tell them apart)."""
    dicts = [v for v in values if isinstance(v, dict)]
    keys: list[str] = []
    for d in dicts:
        keys += [k for k in d if k not in keys]
    return [k for k in keys if len({json.dumps(d.get(k), sort_keys=True) for d in dicts}) > 1]


def _short_names(fields: list[str]) -> dict[str, str]:
    """Each field's shortest dotted suffix that no other grid field ends with."""
    out = {}
    for f in fields:
        parts = f.split(".")
        for n in range(1, len(parts) + 1):
            suffix = ".".join(parts[-n:])
            if not any(o != f and (o == suffix or o.endswith("." + suffix)) for o in fields):
                break
        out[f] = suffix
    return out


def _under(field_name: str, section: str) -> bool:
    return field_name.startswith(section + ".")


def expand_settings(grid: dict[str, list[Any]]) -> list[Setting]:
    """The grid's settings in order, with axes under a section turned off dropped (see above)."""
    for f, values in grid.items():
        if f in RESERVED:
            raise SpecError(f"grid {f}: cannot be varied ({RESERVED[f]})")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", f):
            raise SpecError(f"grid {f!r}: not a dotted field name; write e.g. reduce_lr.patience")
        if not isinstance(values, list) or not values:
            raise SpecError(f"grid {f}: empty list; give at least one value, e.g. {f}: [1, 2]")
        seen = set()
        for v in values:
            key = json.dumps(v, sort_keys=True, default=str)
            if key in seen:
                raise SpecError(f"grid {f}: the value {_render(v)} is listed twice")
            seen.add(key)
    fields = list(grid)
    differing = {f: _differing_keys(grid[f]) for f in fields}
    short = _short_names(fields)
    settings: list[Setting] = []
    seen_settings: set[str] = set()
    for combo in itertools.product(*(grid[f] for f in fields)):
        values = dict(zip(fields, combo))
        off = [f for f, v in values.items() if v is None]
        values = {f: v for f, v in values.items() if not any(_under(f, s) for s in off)}
        key = json.dumps(values, sort_keys=True, default=str)
        if key in seen_settings:
            continue
        seen_settings.add(key)
        shown = {f: _render(v, differing[f], _is_section(f)) for f, v in values.items()}
        # A one-value axis is a constant of the study, and "reduce_lr=on" says nothing when
        # reduce_lr.factor=... follows it: neither tells settings apart, so neither is named.
        named = [f for f in values if len(grid[f]) > 1]
        parts = [f for f in named if not (shown[f] == "on" and any(_under(o, f) for o in named))]
        label = ",".join(f"{f}={shown[f]}" for f in parts) or "base"
        slug = "_".join(f"{short[f]}-{_slug(shown[f])}" for f in parts) or "base"
        full = ",".join(f"{f}={shown[f]}" for f in values)
        settings.append(Setting(len(settings), values, label, slug, {f: shown.get(f, "") for f in fields}, full))
    slugs = [s.slug for s in settings]
    for s in settings:
        if slugs.count(s.slug) > 1:
            s.slug = f"{s.slug}-{s.index + 1}"
    return settings


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-") or "x"


def apply_setting(base: dict, values: dict[str, Any]) -> dict:
    """`base` (a train spec as a dict) with a setting's values set, sections before their fields."""
    data = copy.deepcopy(base)
    for f in sorted(values, key=lambda f: f.count(".")):  # stable: grid order within a depth
        set_path(data, f, copy.deepcopy(values[f]))
    return data


def expand(spec: CompareSpec, trials_dir: Optional[Path] = None, seeds: Optional[list[int]] = None) -> list[Trial]:
    """Every trial of the study, each train spec validated; raises SpecError naming the setting.

    `seeds` default: every seed the study may run (with sequential seeding, up to its `max`).
    """
    if not isinstance(spec.base, TrainSpec):
        raise SpecError(f"base: {spec.base!r} was not loaded; load compare specs with load_spec")
    seeds = list(seeds if seeds is not None else SeedPlan.of(spec).seeds)
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise SpecError(f"seeds: {', '.join(map(str, repeated))} listed twice; each seed is one trial per setting")
    base = spec.base.model_dump(mode="json")
    output = str(trials_dir if trials_dir is not None else Path(spec.output) / spec.name / "trials")
    trials = []
    for setting in expand_settings(spec.grid):
        data = apply_setting(base, setting.values)
        for seed in seeds:
            data = dict(data, name=f"{spec.name}-{setting.slug}-s{seed}", output=output)
            data["training"] = dict(data.get("training") or {}, seed=seed)
            where = f"grid {setting.full}: " if spec.grid else "base: "
            train_spec = validate_train(data, where=where)
            if train_spec.scaling.num_workers == 0:
                # Measured: the worker loop then runs in the trial's own process, where Tune
                # refuses ray.train.get_context().
                raise SpecError(f"{where}scaling.num_workers: 0 (Ray Train's in-process local mode) "
                                f"cannot run inside a Tune trial; use 1 or more workers")
            trials.append(Trial(setting, seed, train_spec.name, train_spec))
    return trials

