"""params.yaml into `Params`: read strictly (pipelines/params/reader.py), converted section by section
(convert.py), then the rules between sections (checks.py). Every stage calls `load_params` before any compute."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from pipelines.params.checks import check_params
from pipelines.params.convert import build
from pipelines.plumbing.errors import ParamsError
from pipelines.params.reader import read_yaml
from pipelines.params.schema import Params

PARAMS_FILE = "params.yaml"


def parse_params(raw: Any, source: str = PARAMS_FILE) -> Params:
    """Validate a parsed params mapping; raise ParamsError with a one-line message naming the key."""
    if not isinstance(raw, dict):
        kind = "an empty document" if raw is None else f"a {type(raw).__name__}"
        sections = ", ".join(f.name for f in dataclasses.fields(Params))
        raise ParamsError(f"{source}: expected a mapping of sections ({sections}), got {kind}")
    try:
        params = build(Params, raw, "")
        check_params(params)
    except ParamsError as e:
        raise ParamsError(f"{source}: {str(e).lstrip('.')}") from None
    return params


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    """Read and validate params.yaml."""
    return parse_params(read_yaml(path), str(path))
