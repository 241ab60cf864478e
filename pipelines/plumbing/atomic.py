"""Atomic writes: every output goes to a temporary file beside its target and is renamed into place.

A killed stage never leaves a half-written file, and a failed stage leaves the old one intact. A
temporary file carries its writer's PID; the next start of a stage that names the target removes
those whose writer is dead. Checkpoints are pickled from a canonical copy, so their bytes are a
function of their contents: a resumed run writes the file an unbroken run writes.

Imports: the standard library only at load. numpy (about 0.16 s to import) and torch (about 2.4 s) are imported
inside the writers that take their objects, whose callers have loaded them already: pipelines/plumbing/tracking.py, which
the background MLflow logger started after every stage runs, uses `pid_alive` from here, and validating params,
gathering the table and restoring outputs need no torch.
"""

from __future__ import annotations

import glob
import io
import json
import os
import re
import sys
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

_UMASK = os.umask(0o022)
os.umask(_UMASK)
_TEMPORARY = re.compile(r"\.(\d+)\.[^.]+\.tmp$")  # .<target name>.<writer pid>.<random>.tmp


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write bytes to `path` via a temporary file in the same directory and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give outputs the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_save_npz(path: str | Path, **arrays: Any) -> None:
    import numpy as np  # loaded by every caller, which hands over arrays: see the module's docstring

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def atomic_save_figure(path: str | Path, fig) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def atomic_torch_save(path: str | Path, obj: Any) -> None:
    """torch.save of `canonical(obj)`, atomically: equal contents, equal bytes."""
    import torch  # loaded by every caller, which hands over tensors: see the module's docstring

    buf = io.BytesIO()
    torch.save(canonical(obj), buf)
    atomic_write_bytes(path, buf.getvalue())


def tensor_type() -> type | tuple:
    """torch.Tensor if torch is loaded, else () (isinstance is then False): this module never imports torch itself,
    so the stages that need no torch (validating params, gathering the table) start in a fraction of a second."""
    torch = sys.modules.get("torch")
    return torch.Tensor if torch else ()


def canonical(obj: Any) -> Any:
    """A copy of a checkpoint's object tree whose pickle is a function of its contents alone.

    pickle writes an object seen twice as a back-reference, by identity: a resumed run whose
    config strings are other objects than an unbroken run's pickled to other bytes with equal
    contents, so DVC saw a new output. Interned strings, fresh containers and tensors with
    storages of their own make equal contents pickle identically.
    """
    if isinstance(obj, tensor_type()):
        return obj.detach().clone(memory_format=sys.modules["torch"].contiguous_format)
    if isinstance(obj, str):
        return sys.intern(obj)
    if isinstance(obj, OrderedDict):  # a state_dict, with the _metadata load_state_dict reads
        out = OrderedDict((canonical(k), canonical(v)) for k, v in obj.items())
        if hasattr(obj, "_metadata"):
            out._metadata = canonical(obj._metadata)
        return out
    if isinstance(obj, dict):
        return {canonical(k): canonical(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(canonical(v) for v in obj)
    return obj


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists: a writer whose leftovers (a temporary file, a spool folder) may still grow."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(paths: list[str]) -> list[Path]:
    """Remove the temporary files that killed writers of `paths` (and of their `.partial`) left beside them; for a
    folder in `paths` (a matrix stage writes `<folder>/<item>...`), those of every file under it.

    A temporary file of a live writer is kept: two stages may write beside each other.
    """
    removed = []
    for p in map(Path, paths):
        if not p.name or not p.parent.is_dir():
            continue
        folder = p.is_dir()  # others' temporaries too: only those that name their dead writer
        for tmp in p.rglob(".*.tmp") if folder else p.parent.glob(f".{glob.escape(p.name)}.*.tmp"):
            m = _TEMPORARY.search(tmp.name)
            if (m is None and not folder) or (m is not None and not pid_alive(int(m.group(1)))):
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
    return removed
