"""Your own model: where `model.build` points, checked on the driver without importing it, carried
to every worker, and imported there.

`model.build` is ``"module:function"`` (a module on the import path) or ``"file.py:function"``
(a Python file; a relative path is read from the spec file's folder). `resolve` turns it into a
`ModelRef` with an absolute file path; `check` finds the module or file and reads its source
with `ast` to confirm the function is defined at its top level, importing nothing;
`runtime_env_for` is what Ray's runtime_env needs for every worker on every node to import it
(`py_modules`); `load_builder` imports it, in a worker.

This module imports no Ray, TensorFlow, JAX or Keras, and, but for `load_builder`, none of your
code: the driver checks a spec before anything starts.

Example::

    ref = resolve("cnn.py:build", Path("examples"))   # ModelRef(function='build', file=Path('/.../examples/cnn.py'))
    check(ref)                                        # BuilderError if the file or the function is missing
    runtime_env_for(ref)                              # {'py_modules': ['/.../examples/cnn.py']}
    build = load_builder(ref)                         # in a worker: the function itself
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import importlib
import importlib.util
import keyword
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Union

from service.compat import ray as compat_ray
from service.errors import BadInput, first_line

FORMS = "MODULE:FUNCTION (a module on the import path) or FILE.py:FUNCTION, e.g. examples/cnn.py:build"
# Imported only in the workers, and never by plateau's driver: a builder may not live in one, as
# finding a function in a submodule of a package imports the package.
FRAMEWORKS = ("keras", "tf_keras", "tensorflow", "jax", "jaxlib", "ray", "torch")
# Names the builder's call fills in itself (`fn(input_shape, classes, **kwargs)`, plus `keras`).
RESERVED_KWARGS = ("input_shape", "classes", "keras", "seeded_dropout", "seed")


class BuilderError(BadInput):
    """`model.build` names nothing that can be imported, as one line: what is missing, how to fix it."""


@dataclasses.dataclass(frozen=True)
class ModelRef:
    """A parsed `model.build`: a function, in a module (dotted name) or in a file (absolute path)."""

    function: str
    module: Optional[str] = None
    file: Optional[Path] = None

    def __str__(self) -> str:
        """The spec's form: `/abs/path/cnn.py:build` or `pkg.models:build`."""
        return f"{self.file if self.file is not None else self.module}:{self.function}"

    @property
    def import_name(self) -> str:
        """The module a worker imports: the dotted name, or the file's name without `.py`
        (`py_modules` puts the file itself on the workers' import path)."""
        return self.module if self.module is not None else self.file.stem


def _is_name(text: str) -> bool:
    return text.isidentifier() and not keyword.iskeyword(text)


def parse(build: str) -> ModelRef:
    """`build` as written, without looking at the file system (a relative file stays relative).

    Example::

        parse("pkg.models:cnn")    # ModelRef(function='cnn', module='pkg.models')
    """
    if not isinstance(build, str) or not build.strip():
        raise BuilderError(f"expected {FORMS}; got {build!r}")
    where, sep, function = build.strip().rpartition(":")
    if not sep or not where:
        raise BuilderError(f"{build!r} names no function; expected {FORMS}")
    if not _is_name(function):
        raise BuilderError(f"{function!r} is not a Python function name; expected {FORMS}")
    if where.endswith(".py") or "/" in where or os.sep in where:
        return ModelRef(function, file=Path(where).expanduser())
    if not all(_is_name(part) for part in where.split(".")):
        raise BuilderError(f"{where!r} is neither a module name nor a .py file; expected {FORMS}")
    return ModelRef(function, module=where)


def resolve(build: str, base_dir: Union[str, Path, None]) -> ModelRef:
    """`build` with a relative file read from `base_dir` (the spec file's folder; None: the current
    directory), made absolute. A module name is kept as it is.

    Example::

        resolve("cnn.py:build", "examples")   # ModelRef(function='build', file=Path('/.../examples/cnn.py'))
    """
    ref = parse(build)
    if ref.file is None or ref.file.is_absolute():
        return ref
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    return dataclasses.replace(ref, file=Path(os.path.abspath(base / ref.file)))


def check(ref: ModelRef) -> ModelRef:
    """The module or file exists and defines `ref.function` at its top level (its source read with
    `ast`, nothing imported but a module's parent packages); else one BuilderError line."""
    if ref.file is not None:
        source = _file_source(ref.file)
        _shadowing(ref.file)
    else:
        source = _module_source(ref.module)
    _defines(source, ref)
    return ref


def _file_source(path: Path) -> Path:
    if not path.is_file():
        raise BuilderError(f"no file {path}; a relative path is read from the spec file's folder "
                           f"(from the current directory in --set), or give {FORMS}")
    if not _is_name(path.stem):
        raise BuilderError(f"{path.name} is not a Python module name, and the workers import it by its name; "
                           f"rename it with letters, digits and _ only (e.g. {_as_name(path.stem)}.py)")
    return path


def _as_name(stem: str) -> str:
    name = "".join(c if c.isalnum() or c == "_" else "_" for c in stem)
    return name if _is_name(name) else f"m_{name}"


def _shadowing(path: Path) -> None:
    """A file the workers import as `cnn` must not hide another module of that name (`keras.py`
    would hide Keras itself). Finding a top-level name imports nothing."""
    try:
        found = importlib.util.find_spec(path.stem)
    except (ImportError, ValueError):
        return
    origin = getattr(found, "origin", None)
    if found is not None and (origin is None or Path(origin).resolve() != path.resolve()):
        raise BuilderError(f"{path.name} has the name of the module {path.stem} ({origin or 'a package'}), which "
                           f"it would hide in the workers; rename the file (e.g. my_{path.stem}.py)")


def _module_source(module: str) -> Path:
    top = module.split(".")[0]
    if top in FRAMEWORKS:
        raise BuilderError(f"{module} is part of {top}, which plateau imports only in the workers; write your "
                           f"builder in a file of your own (e.g. my_models.py:build) that calls it")
    hint = ("set PYTHONPATH to the folder that holds it, install it, or give the file: FILE.py:FUNCTION "
            "(a path relative to the spec file's folder)")
    try:
        found = importlib.util.find_spec(top)
        if found is not None and module != top:
            found = importlib.util.find_spec(module)  # imports the package `top` (your code, not a framework)
    except ModuleNotFoundError:
        found = None
    except Exception as exc:  # noqa: BLE001 - the package's own __init__ failed: one line, never a traceback
        raise BuilderError(f"importing the package of {module} failed ({type(exc).__name__}: {first_line(exc)}); "
                           f"fix it, or give the builder's file: FILE.py:FUNCTION") from None
    if found is None:
        raise BuilderError(f"no module {module} on the import path; {hint}")
    origin = found.origin if found.has_location else None
    if origin is None or not origin.endswith(".py"):
        raise BuilderError(f"module {module} has no Python source to read ({origin or 'a namespace package'}); "
                           f"give a module with a .py file, or FILE.py:FUNCTION")
    return Path(origin)


def _defines(source: Path, ref: ModelRef) -> None:
    """`ref.function` is bound at the top level of `source` (a def, an assignment or an import)."""
    try:
        tree = ast.parse(source.read_bytes(), filename=str(source))
    except SyntaxError as exc:
        raise BuilderError(f"{source} is not valid Python (line {exc.lineno}: {exc.msg}); fix it") from None
    except OSError as exc:
        raise BuilderError(f"{source} cannot be read ({first_line(exc)})") from None
    functions, names = [], set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            functions.append(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    if ref.function in functions or ref.function in names:
        return
    guess = difflib.get_close_matches(ref.function, functions, n=1)
    known = f"did you mean {guess[0]}?" if guess else (
        f"it defines {', '.join(functions)}" if functions else "it defines no function")
    raise BuilderError(f"{source} defines no top-level function {ref.function} ({known}); name a function "
                       f"defined with def at the top of the file")


def runtime_env_for(ref: ModelRef) -> dict:
    """What Ray's runtime_env needs for every worker, on every node, to import the builder: the
    file, or the top-level package's folder, in `py_modules`. Nothing for a module installed in
    site-packages: it is expected installed on every node, as the project's dependencies are.

    Example::

        runtime_env_for(resolve("pkg.models:cnn", "."))   # {'py_modules': ['/home/me/code/pkg']}
    """
    shipped = local_code(ref)
    return {"py_modules": [str(shipped)]} if shipped is not None else {}


def shipped_code(specs: Iterable[Any]) -> list[str]:
    """The `py_modules` of a Ray session that trains `specs` (train specs): every builder's file or
    package folder, once. Ray uploads such local code only with the session (`ray.init`'s runtime
    env, the job's), not with a trainer's workers, so the session carries it for every worker of
    every run and trial in it."""
    found: dict[str, None] = {}
    for spec in specs:
        if spec.model.build:
            found.update(dict.fromkeys(runtime_env_for(resolve(spec.model.build, None)).get("py_modules", [])))
    return list(found)


def local_code(ref: ModelRef) -> Optional[Path]:
    """The file or folder that holds the builder's code and is not installed (None: installed)."""
    if ref.file is not None:
        return ref.file
    try:
        found = importlib.util.find_spec(ref.module.split(".")[0])  # a top-level name: imports nothing
    except (ImportError, ValueError):
        return None
    if found is None:
        return None
    if found.submodule_search_locations:
        where = Path(list(found.submodule_search_locations)[0])
    elif found.has_location and found.origin:
        where = Path(found.origin)
    else:
        return None
    if compat_ray.shipped_by_ray(where):  # a job's driver may not ship it again: Ray refuses to merge the envs
        return None
    return None if {"site-packages", "dist-packages"} & set(where.parts) else where


def load_builder(ref: Union[ModelRef, str]) -> Callable:
    """The builder function, imported (in a worker; the only function here that runs user code).

    A file is read from its path when this node has it; else by its name, from `py_modules`.

    Example::

        build = load_builder("/home/me/examples/cnn.py:build")
        model = build((28, 28), 10, filters=16)
    """
    ref = parse(ref) if isinstance(ref, str) else ref
    if ref.file is not None and ref.file.is_file():
        module = sys.modules.get(ref.import_name)
        if module is None or Path(getattr(module, "__file__", "") or "").resolve() != ref.file.resolve():
            spec = importlib.util.spec_from_file_location(ref.import_name, ref.file)
            module = importlib.util.module_from_spec(spec)
            sys.modules[ref.import_name] = module  # Keras finds layers defined in it by module name
            spec.loader.exec_module(module)
    else:
        module = importlib.import_module(ref.import_name)
    function = getattr(module, ref.function, None)
    if not callable(function):
        raise BuilderError(f"{module.__name__} has no function {ref.function}")
    return function
