"""The one registry pattern for every choice params.yaml names: a name -> "module:attribute", imported when looked up.

Naming a choice, and validating params (pipelines/params/), imports no torch: validation takes a fraction of a second
instead of torch's two. Each family keeps its own registry next to its code (components/networks/registry.py,
components/sampling/registry.py, components/scoring/registry.py, components/training/registry.py), so a stage that
only needs networks names no sampler or feature extractor (dvc.yaml's code deps count a "module:attribute" string as
an import of that module). A network's constructor options are declared beside its entry (components/networks/
options.py), torch-free; tests/pipelines/params/test_params.py checks them against the imported class's signature.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import Any

NO_DEFAULT = object()  # an option params must give
Options = dict[str, tuple[str, Any]]  # option -> (annotation text, default or NO_DEFAULT)


class Registry(Mapping[str, Any]):
    """Names of one kind of choice -> the objects they name, imported when first looked up."""

    def __init__(self, kind: str, entries: dict[str, str], options: dict[str, Options] | None = None):
        self.kind = kind
        self._entries = dict(entries)  # name -> "module:attribute"
        self._options = dict(options or {})  # name -> its constructor's declared options
        extra = set(self._options) - set(self._entries)
        if extra:
            raise ValueError(f"{kind} options declared for unregistered {', '.join(sorted(extra))}")

    def __getitem__(self, name: str) -> Any:
        if name not in self._entries:
            raise KeyError(f"unknown {self.kind} {name!r}; allowed: {', '.join(self._entries)}")
        module, attribute = self._entries[name].split(":")
        return getattr(importlib.import_module(module), attribute)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def parameters(self, name: str) -> Options:
        """The constructor's keyword options of class `name`, as declared: option -> (annotation text, default or
        NO_DEFAULT)."""
        if name not in self._options:
            raise LookupError(f"{self.kind} {name!r} declares no constructor options")
        return dict(self._options[name])
