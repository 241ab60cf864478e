"""The converter: a parsed YAML mapping into the schema's frozen dataclasses, checked against their annotations.

Unknown keys, missing keys, wrong types, integers beyond 64 bits, floats that are not finite and cell names that are
not NAME are refused here; each dataclass's `__post_init__` then checks its own fields' ranges and names. Every
error is one ParamsError line naming the dotted key (`sweep.ddim-50.eta: ...`). Why hand-written and not pydantic:
docs/params.md.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from typing import Any

from components.registry import NO_DEFAULT
from pipelines.plumbing.errors import ParamsError
from pipelines.params.errors import show_key, show_value
from pipelines.params.fields import INT64, MAX_WIDTH, NAME, between, require
from pipelines.params.training import NetworkParams

ANNOTATIONS = {"int": int, "float": float, "bool": bool, "str": str}  # network options' annotations, as source text
_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "a mapping"}


def convert(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp` and build dataclasses; errors name `key`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):  # `float | None`: optional cell options
        if value is None and type(None) in args:
            return None
        (tp,) = [a for a in args if a is not type(None)]
        return convert(value, tp, key)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key)
    if origin is list:
        if not isinstance(value, list):
            raise ParamsError(f"{key}: expected a list, got {show_value(value)}")
        return [convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:  # the sweeps: name -> cell
        if not isinstance(value, dict):
            raise ParamsError(f"{key}: expected a mapping, got {show_value(value)}")
        for k in value:
            _cell_name(k, key)
        return {k: convert(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp in (int, float) and isinstance(value, int) and not isinstance(value, bool):
        require(-INT64 <= value < INT64, key, f"{show_value(value)} does not fit in 64 bits")
        return float(value) if tp is float else value
    if not isinstance(value, tp) or (isinstance(value, bool) and tp is not bool):
        raise ParamsError(f"{key}: expected {_TYPE_NAMES.get(tp, tp.__name__)}, got {show_value(value)}")
    if tp is float:
        require(math.isfinite(value), key, f"must be a finite number, got {value}")
    return value


def _cell_name(k: Any, key: str) -> None:
    """A sweep's cell name becomes a stage name and a file name: it must match NAME."""
    if not isinstance(k, str) or not NAME.fullmatch(k):
        hint = "; write 0.5 as 0_5, for example" if isinstance(k, str) and re.search(r"\d\.\d", k) else ""
        raise ParamsError(f"{key}: cell name {show_value(k)} is not allowed: use 1 to 64 letters, digits, '_' or "
                          f"'-', starting with a letter or digit (it becomes a stage name and a file name){hint}")


def build(cls: type, raw: Any, key: str) -> Any:
    """Build dataclass `cls` from the mapping `raw`, rejecting unknown and missing keys."""
    if issubclass(cls, NetworkParams):
        return _build_network(cls, raw, key)
    if not isinstance(raw, dict):
        raise ParamsError(f"{key}: expected a mapping, got {show_value(raw)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = [k for k in raw if k not in fields]
    if unknown:
        raise ParamsError(f"{key}.{show_key(unknown[0])}: unknown key; allowed: {', '.join(fields)}")
    missing = [n for n, f in fields.items() if n not in raw and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ParamsError(f"{key}.{missing[0]}: missing key")
    values = {n: convert(v, hints[n], f"{key}.{n}") for n, v in raw.items()}
    try:
        return cls(**values)
    except ParamsError as e:
        raise ParamsError(f"{key}.{e}") from None


def _build_network(cls: type[NetworkParams], raw: Any, key: str) -> NetworkParams:
    """A network section: `name` from cls.registry, other keys typed by the constructor's declared options."""
    registry = cls.registry
    if not isinstance(raw, dict) or "name" not in raw:
        raise ParamsError(f"{key}.name: missing key; allowed networks: {', '.join(registry)}")
    raw = dict(raw)
    name = raw.pop("name")
    if not isinstance(name, str) or name not in registry:
        raise ParamsError(f"{key}.name: unknown network {show_value(name)}; allowed: {', '.join(registry)}")
    options = registry.parameters(name)  # declared beside the registry entry: no torch import
    # set by the stage, not by params: the data's shape, the variance head, the data's classes
    allowed = [p for p in options if p not in ("data_shape", "out_mult", "n_classes")]
    kwargs = {}
    for k, v in raw.items():
        if k not in allowed:
            raise ParamsError(f"{key}.{show_key(k)}: unknown key for network {name!r}; allowed: name, "
                              f"{', '.join(allowed)}")
        annotation, default = options[k]
        kwargs[k] = convert(v, ANNOTATIONS.get(annotation, Any), f"{key}.{k}")
        # an option whose default is 0 is off at 0, e.g. fourier_octaves
        off = default is not NO_DEFAULT and default == 0
        if isinstance(kwargs[k], int) and not isinstance(kwargs[k], bool):
            between(f"{key}.{k}", kwargs[k], 0 if off else 1, MAX_WIDTH)
    return cls(name, kwargs)
