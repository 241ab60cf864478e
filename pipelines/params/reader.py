"""The one strict YAML reader: params.yaml, claims.yaml and profiles all go through `read_yaml`.

UTF-8 only, PyYAML's safe loader, and a key given twice in one mapping is an error (PyYAML keeps the last
silently); every failure is one ParamsError line naming the file and, where there is one, the line and the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pipelines.plumbing.errors import ParamsError
from pipelines.params.errors import show_value


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, but a key given twice in one mapping is an error (PyYAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                line = first.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:  # an unhashable key: SafeLoader reports it
                continue
            if line != key_node.start_mark.line + 1:
                raise ParamsError(f"line {key_node.start_mark.line + 1}: duplicate key {show_value(key)} "
                                  f"(first given at line {line})")
        return super().construct_mapping(node, deep)


def _text(path: Path) -> str:
    """The file's text; ParamsError naming the file for a missing file, an unreadable one, or bytes not UTF-8."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found") from None
    except OSError as e:
        raise ParamsError(f"{path}: cannot read ({e.strerror})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ParamsError(f"{path}: line {line}: not UTF-8 (byte 0x{data[e.start]:02x})") from None


def read_yaml(path: str | Path) -> Any:
    """The YAML document of a UTF-8 file; ParamsError naming the file (and the line) for a missing file, bytes that
    are not UTF-8, YAML syntax errors and duplicate keys."""
    path = Path(path)
    text = _text(path)
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except ParamsError as e:
        raise ParamsError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        what = getattr(e, "problem", None) or (str(e).splitlines() or ["syntax error"])[0]
        raise ParamsError(f"{path}: {where}not valid YAML ({what})") from None
