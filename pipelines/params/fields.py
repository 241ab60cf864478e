"""The limits every value lies in, and the checks of one field that the sections' dataclasses call.

Every number is finite and in its range; every integer fits in 64 bits and seeds lie in [0, 2^63); sizes have upper
bounds a run could meet (MAX_* below). Cell names become DVC stage names and file names, so they match NAME: no
shell, path or space characters. Each check raises ParamsError naming the field; the converter prefixes the
section's dotted key.
"""

from __future__ import annotations

import re
from pathlib import Path

from pipelines.plumbing.errors import ParamsError

# A name that reaches a stage name, a path or a command line (sweep cells).
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
INT64 = 2**63  # integers lie in [-2^63, 2^63); seeds in [0, 2^63), which numpy's and torch's generators all take
MAX_T = 100_000  # diffusion steps (DDPM 1000, iDDPM 4000); schedules are float64 tables of this length
MAX_POINTS = 10**8  # points in a data split or a cell's samples
MAX_BATCH = 10**6
MAX_STEPS = 10**9  # optimiser steps
MAX_PROCESSES = 1024  # runtime.processes: training ranks on one machine
MAX_WIDTH = 2**16  # any integer option of a network (widths, depths, embedding sizes)
# Files a run reads from outside the repository (CIFAR-10's batches, Inception's weights) live here, so that DVC can
# list the folder as a dependency of the stages that read it in every profile: replacing a file reruns them.
EXTERNAL_DIR = "data/external"


def choice(name: str, value: str, allowed, what: str) -> None:
    """Field `name` must be one of `allowed` (a registry)."""
    if value not in allowed:
        raise ParamsError(f"{name}: unknown {what} {value!r}; allowed: {', '.join(allowed)}")


def require(ok: bool, name: str, message: str) -> None:
    """Field `name` must satisfy `ok`."""
    if not ok:
        raise ParamsError(f"{name}: {message}")


def between(name: str, value: int | float, lo: int | float, hi: int | float) -> None:
    """Field `name` must lie in [lo, hi]."""
    require(lo <= value <= hi, name, f"must be in [{lo:,}, {hi:,}], got {value:,}")


def seed_in_range(name: str, value: int) -> None:
    """Field `name` is a seed: in [0, 2^63)."""
    require(0 <= value < INT64, name, f"a seed must be in [0, 2^63), got {value}")


def external(name: str, path: str) -> None:
    """A file or folder a run reads from outside the repository: a relative path inside EXTERNAL_DIR."""
    parts = Path(path).parts
    require(not Path(path).is_absolute() and ".." not in parts and len(parts) > 2
            and Path(*parts[:2]) == Path(EXTERNAL_DIR), name,
            f"must be a path inside {EXTERNAL_DIR}/ (a dependency of the stages that read it; put the file there or "
            f"link it, e.g. ln -s ~/datasets/cifar-10-batches-py {EXTERNAL_DIR}/), got {path!r}")
