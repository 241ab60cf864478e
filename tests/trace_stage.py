"""Run one stage's command and record what it reads: the params keys and the project modules it imports.

    python tests/trace_stage.py <record.json> python -m pipelines.<module> <args>...

Run from the root of the repository whose stage it is: that directory comes first on sys.path, as
with `python -m`, so the code traced is that repository's. tests/pipelines/orchestration/test_dag.py compares the record
with the stage's `params:` and `deps:` in dvc.yaml.

Params: `pipelines.params.loader.parse_params` (which `load_params` calls) is patched before the stage's
module is imported, and every Params it returns records its reads:
  - reading a dataclass field records its path ("sample.n", "sweep.ddim-4.steps", "train_ddpm.network.kwargs"),
    unless the value is itself a traced section or cell dict (that is navigation, not a read): the
    stage reads what it then reads from it. `dataclasses.asdict`, `replace`, `==` and `repr` read
    every field, and so record every field; pickling or copying a section records all of it;
  - a cell dict (`sweep`, `guided_sweep`, `exact_sweep`) records `sweep.<name>` when an item is
    read (`d[name]`, `.get(name)`) and the whole `sweep` when its keys are iterated, counted or
    copied (`items()`, `values()`, `for`, `len`, `{**d}`); a membership test (`in`) records nothing.

Imports: `builtins.__import__` and `importlib.import_module` are wrapped to record, for each
import statement that runs in a project module (`components.*`, `pipelines.*`, the stage's
`__main__`), the edge importer -> imported project module. A lookup through components.registry
(which imports by name) is an import of the code that asked the registry. The record also lists
every project module in sys.modules at the end, so the test can count any it cannot explain.

The record (JSON) is written when the stage's module returns or raises, SystemExit included.
"""

from __future__ import annotations

import builtins
import dataclasses
import importlib
import importlib.util
import json
import os
import runpy
import sys
import typing
import warnings

PROJECT_PACKAGES = ("components", "pipelines")
# Modules that import on behalf of their caller: an import they make is charged to the code that called them.
ON_BEHALF = ("components.registry", "importlib", "importlib._bootstrap")

keys: set[str] = set()  # params keys read
edges: set[tuple[str, str]] = set()  # (importer, imported) module names; "__main__" is the stage's module
_paths: dict[int, str] = {}  # id(traced object) -> its params path ("" for Params itself)
_keep: list = []  # the traced objects, alive, so no id is reused
_patched: set[type] = set()


def _is_project(name: str | None) -> bool:
    return bool(name) and name.split(".")[0] in PROJECT_PACKAGES


# --- params ------------------------------------------------------------------------------------------

def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _record_all(obj) -> None:
    """Every field of section `obj` read (its sections' fields, and whole cell dicts)."""
    path = _paths.get(id(obj))
    if path is None:
        return
    for f in dataclasses.fields(obj):
        value = object.__getattribute__(obj, f.name)
        if isinstance(value, TracedCells):
            keys.add(value._path)
        elif id(value) in _paths:
            _record_all(value)
        else:
            keys.add(_join(path, f.name))


def _getattribute(self, name: str):
    value = object.__getattribute__(self, name)
    path = _paths.get(id(self))
    if path is not None:
        if name in type(self).__dataclass_fields__:
            if id(value) not in _paths:
                keys.add(_join(path, name))
        elif name == "__dict__":
            _record_all(self)
    return value


def _getstate(self):
    _record_all(self)
    return object.__getstate__(self)


def _patch(cls: type) -> None:
    if cls not in _patched:
        cls.__getattribute__ = _getattribute
        cls.__getstate__ = _getstate  # pickle, copy and deepcopy read every field
        _patched.add(cls)


def _whole(method):
    def wrapper(self, *args, **kwargs):
        keys.add(self._path)
        return method(self, *args, **kwargs)
    return wrapper


def _item(method):
    def wrapper(self, key, *args, **kwargs):
        keys.add(f"{self._path}.{key}")
        return method(self, key, *args, **kwargs)
    return wrapper


class TracedCells(dict):
    """A cell dict (name -> cell) that records which cells are read; `in` records nothing."""

    _path: str

    __getitem__ = _item(dict.__getitem__)
    get = _item(dict.get)
    # Whatever sees the set of names (or every cell) reads the whole section. Overriding __iter__ also sends
    # `{**d}`, `dict(d)` and `d | e` through keys() and __getitem__ (CPython's dict merge takes the slow path).
    __iter__ = _whole(dict.__iter__)
    __len__ = _whole(dict.__len__)
    __reversed__ = _whole(dict.__reversed__)
    __repr__ = _whole(dict.__repr__)
    __eq__ = _whole(dict.__eq__)
    __ne__ = _whole(dict.__ne__)
    __or__ = _whole(dict.__or__)
    __ror__ = _whole(dict.__ror__)
    __reduce_ex__ = _whole(dict.__reduce_ex__)
    keys = _whole(dict.keys)
    values = _whole(dict.values)
    items = _whole(dict.items)
    copy = _whole(dict.copy)


def _is_cell_dict(value, annotation) -> bool:
    if not isinstance(value, dict):
        return False
    if typing.get_origin(annotation) is dict:
        args = typing.get_args(annotation)
        return len(args) == 2 and dataclasses.is_dataclass(args[1])
    return bool(value) and all(dataclasses.is_dataclass(v) for v in value.values())


def trace(obj, path: str = ""):
    """Make `obj` (Params) and every section and cell under it record the keys read from it."""
    _paths[id(obj)] = path
    _keep.append(obj)
    _patch(type(obj))
    try:
        hints = typing.get_type_hints(type(obj))
    except Exception:  # an annotation that does not resolve: fall back to looking at the values
        hints = {}
    for f in dataclasses.fields(obj):
        value = object.__getattribute__(obj, f.name)
        sub = _join(path, f.name)
        if _is_cell_dict(value, hints.get(f.name)):
            cells = TracedCells(value)
            cells._path = sub
            _paths[id(cells)] = sub
            _keep.append(cells)
            for name, cell in value.items():
                trace(cell, f"{sub}.{name}")
            object.__setattr__(obj, f.name, cells)
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            trace(value, sub)
    return obj


# --- imports -----------------------------------------------------------------------------------------

_TRACER = globals()
_real_import = builtins.__import__
_real_import_module = importlib.import_module


def _name(g: dict | None) -> str | None:
    """The module whose globals are `g`; None for this tracer (also named __main__, as the stage's module is)."""
    return None if g is None or g is _TRACER else g.get("__name__")


def _caller(depth: int) -> str | None:
    """The module on whose behalf an import runs: the first frame outside the modules that import for others."""
    frame = sys._getframe(depth)
    while frame is not None and _name(frame.f_globals) in ON_BEHALF:
        frame = frame.f_back
    return _name(frame.f_globals) if frame is not None else None


def _note(importer: str | None, name: str, fromlist=()) -> None:
    if importer != "__main__" and not _is_project(importer):
        return
    if _is_project(name):
        edges.add((importer, name))
    for item in fromlist or ():
        sub = f"{name}.{item}"
        if _is_project(sub) and sub in sys.modules:
            edges.add((importer, sub))


def _import(name, globals=None, locals=None, fromlist=(), level=0):
    module = _real_import(name, globals, locals, fromlist, level)
    importer = _name(globals)
    if importer in ON_BEHALF:
        importer = _caller(2)
    if level:
        name = importlib.util.resolve_name("." * level + name, globals.get("__package__"))
    _note(importer, name, fromlist)
    return module


def _import_module(name, package=None):
    module = _real_import_module(name, package)
    _note(_caller(2), module.__name__)
    return module


# --- the run -----------------------------------------------------------------------------------------

def _file(name: str, main_module: str) -> str | None:
    module = sys.modules.get(main_module if name == "__main__" else name)
    path = getattr(module, "__file__", None)
    if path is None:
        spec = importlib.util.find_spec(main_module if name == "__main__" else name)
        path = spec and spec.origin
    return os.path.relpath(path) if path else None


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[2] != "-m":
        print("usage: python tests/trace_stage.py <record.json> python -m <module> <args>...", file=sys.stderr)
        return 2
    out, module, args = argv[0], argv[3], argv[4:]
    sys.path[0] = os.getcwd()  # as `python -m` from here: this repository's code, not the script's directory's
    builtins.__import__ = _import
    importlib.import_module = _import_module

    import pipelines.params.loader

    real_parse = pipelines.params.loader.parse_params
    pipelines.params.loader.parse_params = lambda *a, **k: trace(real_parse(*a, **k))  # load_params calls it

    sys.argv = [module, *args]
    # validate's module is the package pipelines.params, imported above to patch its loader: runpy runs its __main__
    warnings.filterwarnings("ignore", message=".*found in sys.modules after import of package", category=RuntimeWarning)
    code: int | str | None = 0
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as e:
        code = e.code
    except BaseException:
        code = "exception"
        raise
    finally:
        builtins.__import__ = _real_import
        importlib.import_module = _real_import_module
        loaded = sorted(n for n in list(sys.modules) if _is_project(n))
        record = {
            "module": module,
            "file": _file(module, module),
            "keys": sorted(keys),
            "imports": sorted({(_file(a, module), _file(b, module)) for a, b in edges}),
            "loaded": sorted(f for f in (_file(n, module) for n in loaded) if f),
            "exit": code,
        }
        with open(out, "w") as f:
            json.dump(record, f, indent=1)
    return code if isinstance(code, int) else (0 if code is None else 1)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
