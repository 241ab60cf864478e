"""How an error message shows a key and a value: on one line, short, whatever the file holds.

The params loader, the strict YAML reader, the claims loader and the profile reader all name the culprit this way
and raise ParamsError, which lives with the other one-line errors in pipelines/plumbing/errors.py (the entry point catches
it without importing any params code).
"""

from __future__ import annotations

from typing import Any


def show_value(value: Any) -> str:
    """A value for an error message: its repr, on one line, at most 60 characters."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def show_key(k: Any) -> str:
    """A mapping key for an error message's key path: as written if it is a short printable string, else show_value."""
    return k if isinstance(k, str) and k.isprintable() and 0 < len(k) <= 60 else show_value(k)
