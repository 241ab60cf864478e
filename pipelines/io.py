"""Stage plumbing: atomic writes, validated loading of inputs, and the entry-point wrapper.

Every output is written to a temporary file beside its target and renamed into place, so a
killed stage never leaves a half-written file, and a failed stage leaves the old one intact.
"""

from __future__ import annotations

import ctypes
import hashlib
import io
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from components.data import Dataset
from pipelines.params import ParamsError


_UMASK = os.umask(0o022)
os.umask(_UMASK)


class InputError(ValueError):
    """An input file (data, checkpoint, samples) that cannot be used; the message names the file."""


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write bytes to `path` via a temporary file in the same directory and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
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
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def atomic_torch_save(path: str | Path, obj: Any) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def atomic_save_figure(path: str | Path, fig) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def load_npz(path: str | Path, required: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Load an .npz and check it holds `required` arrays; InputError names the file otherwise."""
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except Exception as e:  # a truncated or foreign file
        raise InputError(f"{path}: not a readable .npz file ({type(e).__name__})") from None
    missing = [k for k in required if k not in arrays]
    if missing:
        raise InputError(f"{path}: missing array(s) {', '.join(missing)}")
    return arrays


def save_dataset(path: str | Path, ds: Dataset) -> None:
    extra = {} if ds.modes is None else {"modes": ds.modes, "mode_std": np.float64(ds.mode_std)}
    atomic_save_npz(path, x=ds.x, y=ds.y, shift=np.float64(ds.shift), scale=np.float64(ds.scale), **extra)


def load_dataset(path: str | Path) -> Dataset:
    a = load_npz(path, ("x", "y", "shift", "scale"))
    modes = a.get("modes")
    return Dataset(
        x=a["x"], y=a["y"], shift=float(a["shift"]), scale=float(a["scale"]), modes=modes,
        mode_std=float(a["mode_std"]) if modes is not None else None,
    )


def data_fingerprint(x: np.ndarray) -> str:
    """sha256 of a data array: a checkpoint records which data it was trained on."""
    return hashlib.sha256(x.tobytes()).hexdigest()


def data_config(ds: Dataset) -> dict:
    """What a checkpoint's config records of its training data: the model-space map and the fingerprint."""
    return {"shift": ds.shift, "scale": ds.scale, "sha256": data_fingerprint(ds.x)}


def load_checkpoint(path: str | Path, required: tuple[str, ...]) -> dict:
    """torch.load with weights_only=True (no pickle code execution); InputError names the file on failure."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise InputError(f"{path}: checkpoint not found") from None
    except Exception as e:
        raise InputError(f"{path}: not a loadable checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None
    if not isinstance(ckpt, dict):
        raise InputError(f"{path}: not a trilemma checkpoint (expected a dict)")
    missing = [k for k in required if k not in ckpt]
    if missing:
        raise InputError(f"{path}: not a trilemma checkpoint (missing {', '.join(missing)})")
    return ckpt


def pin_malloc_thresholds() -> bool:
    """Fix glibc malloc's trim, top-pad and mmap thresholds for this process; False where there is no glibc.

    glibc adapts these thresholds as a process runs. A sampler's large activations (5 MB per
    tensor at batch 10,000) were then returned to the OS and page-faulted back at every step in
    some processes and not in others, so identical unguided steps took 26 or 44 ms depending on
    the allocator's history. That swing is as large as the effects the table's time axis
    measures (a guided step costs about 1.4 unguided ones). Pinned, freed memory stays in the heap
    for reuse. Speed only: no number a stage computes changes.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3  # <malloc.h>
    settings = ((m_trim_threshold, 1 << 30), (m_top_pad, 64 << 20), (m_mmap_threshold, 32 << 20))
    return all(libc.mallopt(option, value) == 1 for option, value in settings)


def entry_point(main: Callable[[list[str]], None]) -> None:
    """Run a stage's main(argv) with pinned malloc thresholds; bad params or inputs end in one line on
    stderr and exit status 2."""
    pin_malloc_thresholds()
    try:
        main(sys.argv[1:])
    except (ParamsError, InputError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted; outputs left as they were (rerun to resume)", file=sys.stderr)
        sys.exit(130)


def stage_args(argv: list[str], names: tuple[str, ...]) -> list[str]:
    """Positional paths from dvc.yaml's cmd; a wrong count is a usage error naming what is expected."""
    if len(argv) != len(names):
        raise InputError(f"usage: expected {len(names)} arguments ({' '.join(names)}), got {len(argv)}")
    return argv


def parse_T(text: str) -> int:
    """A number-of-steps argument from dvc.yaml's cmd (the DDGAN stages' matrix over params ddgan.T): a positive integer."""
    if not text.isdigit() or int(text) < 1:
        raise InputError(f"T: expected a positive integer number of denoising steps, got {text!r}")
    return int(text)


def progress_enabled() -> bool:
    """Progress bars only on a terminal, so CI logs stay clean."""
    return sys.stderr.isatty()
