"""Stage plumbing: atomic writes, validated loading of inputs, and the entry-point wrapper.

Every output is written to a temporary file beside its target and renamed into place, so a
killed stage never leaves a half-written file, and a failed stage leaves the old one intact.
A temporary file carries its writer's PID; the next start of a stage that names the target
removes those whose writer is dead. Checkpoints are pickled from a canonical copy, so their
bytes are a function of their contents: a resumed run writes the file an unbroken run writes.
"""

from __future__ import annotations

import ctypes
import glob
import hashlib
import io
import json
import os
import re
import signal
import sys
import tempfile
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import numpy as np

from components.data import DATASETS, DataSpec, split_problem
from components.dataset import Dataset
from pipelines.params import ParamsError


_UMASK = os.umask(0o022)
os.umask(_UMASK)


class InputError(ValueError):
    """An input file (data, checkpoint, samples) that cannot be used; the message names the file."""


class NonFiniteError(ArithmeticError):
    """A computation that produced non-finite numbers (a diverged training run, a sampler that blew up)."""


# What a stage reports in one line on stderr, with exit status 2: the user's params, files or run went wrong.
ONE_LINE_ERRORS = (ParamsError, InputError, NonFiniteError)
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
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def _alive(pid: int) -> bool:
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
            if (m is None and not folder) or (m is not None and not _alive(int(m.group(1)))):
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
    return removed


def _tensor() -> type | tuple:
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
    if isinstance(obj, _tensor()):
        import torch

        return obj.detach().clone(memory_format=torch.contiguous_format)
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


def atomic_torch_save(path: str | Path, obj: Any) -> None:
    """torch.save of `canonical(obj)`, atomically: equal contents, equal bytes."""
    import torch

    buf = io.BytesIO()
    torch.save(canonical(obj), buf)
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


def _number(path: str | Path, arrays: dict[str, np.ndarray], key: str) -> float:
    a = arrays[key]
    if a.shape != () or not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise InputError(f"{path}: {key} must be a single number, got an array of shape {a.shape} and dtype {a.dtype}")
    return float(a)


def load_dataset(path: str | Path, name: str) -> Dataset:
    """A split of data set `name`, checked against what the registry knows of it (`split_problem`)."""
    spec = DATASETS[name]
    mixture = ("modes", "mode_std") if spec.mixture else ()
    a = load_npz(path, ("x", "y", "shift", "scale", *mixture))
    ds = Dataset(x=a["x"], y=a["y"], shift=_number(path, a, "shift"), scale=_number(path, a, "scale"),
                 modes=a.get("modes"), mode_std=_number(path, a, "mode_std") if spec.mixture else None)
    problem = split_problem(ds, spec)
    if problem:
        raise InputError(f"{path}: not a {name} split: {problem}")
    return ds


def load_samples(path: str | Path, spec: DataSpec, n: int) -> dict[str, np.ndarray]:
    """A sample stage's output: n finite samples x of the data set's shape, with their NFE."""
    a = load_npz(path, ("x", "nfe"))
    x = a["x"]
    kind = "uint8 pixels" if spec.dtype == np.uint8 else "floats"
    ok = x.dtype == np.uint8 if spec.dtype == np.uint8 else np.issubdtype(x.dtype, np.floating)
    if x.shape != (n, *spec.shape) or not ok:
        raise InputError(f"{path}: x has shape {x.shape} and dtype {x.dtype}, expected {(n, *spec.shape)} {kind} "
                         f"(params: {n} samples); rerun its stage")
    if not np.isfinite(x).all():
        raise InputError(f"{path}: {int((~np.isfinite(x)).sum())} non-finite values in x; rerun its stage")
    return a


def load_reference_stats(path: str | Path, features: str, k: int):
    """Stage `reference`'s statistics of the reference set, made with these params' features and k."""
    from components.metrics import ReferenceSet

    arrays = load_npz(path, ReferenceSet.ARRAYS)
    try:
        ref = ReferenceSet.from_arrays(arrays)
    except (ValueError, TypeError, KeyError) as e:
        raise InputError(f"{path}: not reference statistics ({first_line(e)}); rerun stage reference") from None
    if (ref.kind, ref.k) != (features, k):
        raise InputError(f"{path}: made with features {ref.kind!r}, k = {ref.k}, but params evaluate say "
                         f"{features!r}, k = {k}; rerun stage reference")
    bad = [name for name in ("features", "radii", "mu", "sigma") if not np.isfinite(arrays[name]).all()]
    if bad:
        raise InputError(f"{path}: non-finite values in {', '.join(bad)}; rerun stage reference")
    return ref


def data_fingerprint(x: np.ndarray) -> str:
    """sha256 of a data array: a checkpoint records which data it was trained on."""
    return hashlib.sha256(x.tobytes()).hexdigest()


def data_config(ds: Dataset) -> dict:
    """What a checkpoint's config records of its training data: the model-space map and the fingerprint."""
    return {"shift": ds.shift, "scale": ds.scale, "sha256": data_fingerprint(ds.x)}


def load_checkpoint(path: str | Path, required: tuple[str, ...]) -> dict:
    """torch.load with weights_only=True (no pickle code execution); InputError names the file on failure."""
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise InputError(f"{path}: checkpoint not found") from None
    except Exception as e:
        raise InputError(f"{path}: not a loadable checkpoint ({type(e).__name__}: {first_line(e)})") from None
    if not isinstance(ckpt, dict):
        raise InputError(f"{path}: not a trilemma checkpoint (expected a dict)")
    missing = [k for k in required if k not in ckpt]
    if missing:
        raise InputError(f"{path}: not a trilemma checkpoint (missing {', '.join(missing)})")
    bad = first_nonfinite({k: v for k, v in ckpt.items() if k != "history"})  # a loss history may hold NaN gaps
    if bad:
        raise InputError(f"{path}: non-finite values in {bad}: the run that wrote it diverged; retrain it")
    return ckpt


def first_line(e: BaseException, limit: int = 120) -> str:
    """An exception's message for a one-line error: its first line, shortened."""
    return (str(e).splitlines() or [""])[0][:limit]


def first_nonfinite(obj: Any, key: str = "") -> str | None:
    """The key path of the first floating-point tensor in a nested dict/list with a NaN or inf, else None."""
    if isinstance(obj, _tensor()):
        return (key or "tensor") if obj.is_floating_point() and not obj.isfinite().all() else None
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    for k, v in items:
        bad = first_nonfinite(v, f"{key}.{k}" if key else str(k))
        if bad:
            return bad
    return None


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


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM: the stage stops as a Ctrl-C stops it."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _interrupt(signum: int, frame) -> None:
    raise Interrupted(signum)


def entry_point(main: Callable[[list[str]], None]) -> None:
    """Run a stage's main(argv): pinned malloc thresholds, stale temporaries of its paths removed first.

    Bad params, inputs or non-finite results end in one line on stderr and exit status 2; an
    interrupt (SIGINT, SIGTERM) in one line and 128 + the signal. Under `dvc repro`, which deleted
    the stage's outputs before starting it, any failure first puts back the outputs dvc.lock
    records (pipelines/restore.py): a failed stage loses nothing.
    """
    from pipelines.restore import restore_after_failure  # restore.py writes with this module's atomic writer

    pin_malloc_thresholds()
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    argv = sys.argv[1:]
    remove_stale_temporaries(argv)
    try:
        main_start = time.time()
        main(argv)
        _report_stage_time(main_start, time.time())
    except ONE_LINE_ERRORS as e:
        restore_after_failure()
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except Interrupted as e:
        restore_after_failure()
        print(f"interrupted ({e}); committed outputs kept, rerun to resume", file=sys.stderr)
        sys.exit(128 + e.signum)
    except Exception:
        restore_after_failure()
        raise


def _report_stage_time(main_start: float, main_end: float) -> None:
    """With TRILEMMA_STAGE_TIMES set (benchmarks/stage_times.py), append when this stage's process started and
    when its main ran, so the benchmark can split the stage's wall time into fixed cost and compute."""
    path = os.environ.get("TRILEMMA_STAGE_TIMES")
    if path:
        from pipelines.tracking import process_start_ms

        stage = os.environ.get("DVC_STAGE") or Path(sys.argv[0]).stem
        line = json.dumps({"stage": stage, "started": process_start_ms() / 1000, "main_start": main_start,
                           "main_end": main_end})
        with open(path, "a") as f:
            f.write(line + "\n")


def stage_args(argv: list[str], names: tuple[str, ...]) -> list[str]:
    """Positional paths from dvc.yaml's cmd; a wrong count is a usage error naming what is expected."""
    if len(argv) != len(names):
        raise InputError(f"usage: expected {len(names)} arguments ({' '.join(names)}), got {len(argv)}")
    return argv


def dvc_stage(*names: str) -> tuple[str, str | None]:
    """The stage DVC is running, from the DVC_STAGE it sets for every command: (name, item), e.g. `sample@ddim-50` ->
    ("sample", "ddim-50"), `prepare` -> ("prepare", None); InputError unless its name is one of `names`.

    The item (a cell, a DDGAN T) comes from here, never from dvc.yaml's cmd: DVC interpolates `${key}` into the
    command before any stage can check it, so a name written in params.yaml would reach the shell (`dvc repro -s
    'sample@x$(...)'` skips the validate stage). A stage of a dvc.yaml in a subfolder is addressed
    `<folder>/dvc.yaml:<name>`; the folder is dropped.
    """
    address = os.environ.get("DVC_STAGE", "")
    folder, sep, rest = address.partition(":")
    if sep and folder.endswith("dvc.yaml"):
        address = rest
    name, at, item = address.partition("@")
    if name not in names:
        expected = " or ".join(f"{n}@<item>" if n in MATRIX_STAGES else n for n in names)
        raise InputError(f"DVC_STAGE: expected {expected}, got {address!r}: run this stage with `dvc repro` (by hand: "
                         f"DVC_STAGE={names[0]}{'@<item>' if names[0] in MATRIX_STAGES else ''} python -m ...)")
    return name, (item if at else None)


# dvc.yaml's foreach/matrix stages: their address carries the item, `<stage>@<item>`
MATRIX_STAGES = frozenset({"sample", "sample_guided", "sample_exact", "train_ddgan", "sample_ddgan"})


def checkpoint_path(models_dir: str, model: str) -> str:
    """Model `model`'s checkpoint, `<models>/<model>.pt` (dvc.yaml: models/${item.model}.pt, models/ddgan-${item.T}.pt)."""
    return str(Path(models_dir, f"{model}.pt"))


def parse_T(text: str) -> int:
    """A DDGAN stage's number of steps, its item in DVC_STAGE (`train_ddgan@4`: the matrix over params ddgan.T): a
    positive integer."""
    if not text.isdigit() or int(text) < 1:
        raise InputError(f"T: expected a positive integer number of denoising steps, got {text!r}")
    return int(text)


def progress_enabled() -> bool:
    """Progress bars only on a terminal, so CI logs stay clean."""
    return sys.stderr.isatty()
