"""Placeholder for the builder reference (replaced by the full module)."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Any, Callable


def load_builder(build: str) -> Callable[..., Any]:
    where, _, name = build.rpartition(":")
    if where.endswith(".py"):
        spec = importlib.util.spec_from_file_location(Path(where).stem, where)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    return getattr(module, name)
