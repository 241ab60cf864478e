"""Loading a stage's inputs, each checked on the way in: a file that cannot be used is an InputError naming it.

Data splits (and their writer, `save_dataset`, beside the reader of the format it writes), sample files, the
reference statistics, checkpoints (weights_only=True) and the JSON rows the table gathers.

Imports: torch (about 2.4 s to import, with components/scoring/metrics.py) is imported inside the two loaders that return
tensors' containers (`load_checkpoint`, `load_reference_stats`): the table, claims and validate stages load files
through this module and import no torch.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from components.data.datasets import DATASETS, DataSpec, split_problem
from components.data.dataset import Dataset
from pipelines.plumbing.atomic import atomic_save_npz, tensor_type
from pipelines.plumbing.errors import InputError, first_line


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


def require_keys(path: str | Path, obj: Any, required: tuple[str, ...], kind: str, rerun: str = "") -> dict:
    """`obj` if it is a dict holding `required`; else InputError: `<path>: not <kind> (what is wrong)<rerun>`."""
    if not isinstance(obj, dict):
        raise InputError(f"{path}: not {kind} (expected a dict, got {type(obj).__name__}){rerun}")
    missing = [k for k in required if k not in obj]
    if missing:
        raise InputError(f"{path}: not {kind} (missing {', '.join(missing)}){rerun}")
    return obj


def load_json_row(path: Path, required: tuple[str, ...]) -> dict:
    """A cell's metrics or timing file: a JSON object holding `required`; InputError names the file."""
    try:
        row = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: not found; run its stage") from None
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not a JSON row ({first_line(e)}); rerun its stage") from None
    return require_keys(path, row, required, "a JSON row", "; rerun its stage")


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
    from components.scoring.metrics import ReferenceSet  # imports torch: see the module's docstring

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
    import torch  # see the module's docstring

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise InputError(f"{path}: checkpoint not found") from None
    except Exception as e:
        raise InputError(f"{path}: not a loadable checkpoint ({type(e).__name__}: {first_line(e)})") from None
    require_keys(path, ckpt, required, "a trilemma checkpoint")
    bad = first_nonfinite({k: v for k, v in ckpt.items() if k != "history"})  # a loss history may hold NaN gaps
    if bad:
        raise InputError(f"{path}: non-finite values in {bad}: the run that wrote it diverged; retrain it")
    return ckpt


def first_nonfinite(obj: Any, key: str = "") -> str | None:
    """The key path of the first floating-point tensor in a nested dict/list with a NaN or inf, else None."""
    if isinstance(obj, tensor_type()):
        return (key or "tensor") if obj.is_floating_point() and not obj.isfinite().all() else None
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    for k, v in items:
        bad = first_nonfinite(v, f"{key}.{k}" if key else str(k))
        if bad:
            return bad
    return None
