"""CIFAR-10 (Krizhevsky 2009, Learning Multiple Layers of Features from Tiny Images), the image set of DDPM
(Ho et al. 2020 §4), DDIM and iDDPM, read from a local copy of its standard python batches.

The folder (`cifar-10-batches-py`) holds data_batch_1 .. data_batch_5 and test_batch, each a pickle of a dict:
b"data" a (10000, 3072) uint8 array whose rows are the red, green and blue 32x32 planes, each row-major;
b"labels" a list of 10000 classes 0..9; b"batch_label" and b"filenames". Pickles from a user-supplied folder
can run code, so they are read by an unpickler that builds only numpy arrays, dtypes and plain containers and
refuses any other global before it is called. Each unusable file is one DataFileError naming it, raised
before any split is built.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from components.data.dataset import DataFileError, Dataset, image_split

TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
PER_BATCH = 10_000  # images per batch file
PIXELS = 3 * 32 * 32
KEYS = (b"data", b"labels")  # what the splits read; b"batch_label" and b"filenames" are not needed

_RECONSTRUCT = np.ndarray.__reduce__(np.empty(0))[0]  # what numpy pickles arrays through (numpy[._]core.multiarray)


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle asked for a global that a CIFAR-10 batch never holds."""


def _latin1(text: str, encoding: str = "latin1") -> bytes:
    """`_codecs.encode` as protocol-2 pickles written by Python 3 rebuild bytes with it: latin-1 only."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise RefusedGlobal(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


# (module, name) -> what it may build: numpy's array reconstruction under numpy 1's and numpy 2's module names
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1,
}


class BatchUnpickler(pickle.Unpickler):
    """An unpickler that loads only what CIFAR-10's python batches are made of and refuses every other global."""

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[module, name]
        except KeyError:
            raise RefusedGlobal(f"{module}.{name}") from None


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:200]}" if text else type(e).__name__


def _what(a: object) -> str:
    """A value's type and, for arrays, dtype and shape, for an error message."""
    return f"a {a.dtype} array of shape {a.shape}" if isinstance(a, np.ndarray) else f"a {type(a).__name__}"


def read_batch(path: str | Path, expected: int | None = PER_BATCH) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch (Krizhevsky 2009): (x (n, 3, 32, 32) uint8, labels (n,) int64), n = expected
    (None: any n > 0, as a smaller copy in the same format holds).

    Raises DataFileError naming the file if it is missing, truncated or not a pickle, asks for any global
    beyond numpy's arrays, is not a dict with b"data" and b"labels", or they are not `expected` uint8 rows of
    3072 values and `expected` integer labels in 0..9.
    """
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"{path}: missing (a CIFAR-10 python batch file)")
    try:
        with open(path, "rb") as f:
            batch = BatchUnpickler(f, encoding="bytes").load()  # bytes: Python 2's str, as the official loader reads
    except RefusedGlobal as e:
        raise DataFileError(f"{path}: refused: the pickle asks for {e}, which a CIFAR-10 batch never holds "
                            "(loading it could run code)") from None
    except Exception as e:  # EOFError, UnpicklingError, ValueError, ... of a truncated file or another format
        raise DataFileError(f"{path}: not a readable CIFAR-10 batch pickle (truncated or another format; "
                            f"{_one_line(e)})") from None
    if not isinstance(batch, dict):
        raise DataFileError(f"{path}: holds {_what(batch)}, expected a dict with keys b'data' and b'labels'")
    missing = [k for k in KEYS if k not in batch]
    if missing:
        found = ", ".join(repr(k)[:40] for k in list(batch)[:8])
        raise DataFileError(f"{path}: no key {' or '.join(map(repr, missing))} (keys: {found or 'none'})")
    data, labels = batch[b"data"], batch[b"labels"]
    if expected is None and isinstance(data, np.ndarray) and data.ndim == 2 and len(data):
        expected = len(data)
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.shape == (expected, PIXELS)):
        raise DataFileError(f"{path}: b'data' is {_what(data)}, expected a uint8 array of shape ({expected}, {PIXELS})")
    if not isinstance(labels, list) or len(labels) != expected:
        count = f" of {len(labels)}" if isinstance(labels, (list, tuple, np.ndarray)) else ""
        raise DataFileError(f"{path}: b'labels' is {_what(labels)}{count}, expected a list of {expected} classes")
    bad = [v for v in labels if type(v) is not int or not 0 <= v <= 9]
    if bad:
        raise DataFileError(f"{path}: {len(bad)} of its b'labels' are not classes 0..9, e.g. {repr(bad[0])[:40]}")
    return data.reshape(expected, 3, 32, 32), np.array(labels, dtype=np.int64)  # rows are R, G, B planes


def cifar10_splits(path: str | Path, n_train: int, n_reference: int,
                   expected_per_batch: int | None = PER_BATCH) -> dict[str, Dataset]:
    """CIFAR-10's (Krizhevsky 2009) train split, the first n_train images of data_batch_1..5 in order, and its
    held-out reference, the first n_reference of test_batch: x (N, 3, 32, 32) uint8, labels 0..9.

    `path` is the cifar-10-batches-py folder. All six files are checked (read_batch) before a split is built:
    each must hold `expected_per_batch` images (None: as many as data_batch_1, the same in all six).
    """
    folder = Path(path)
    if expected_per_batch is None and (folder / TRAIN_BATCHES[0]).is_file():
        expected_per_batch = len(read_batch(folder / TRAIN_BATCHES[0], None)[1])
    n_batch = expected_per_batch or PER_BATCH
    if not 1 <= n_train <= len(TRAIN_BATCHES) * n_batch or not 1 <= n_reference <= n_batch:
        raise ValueError(f"cifar10 has {len(TRAIN_BATCHES) * n_batch:,} train and {n_batch:,} test images; got "
                         f"n_train = {n_train}, n_reference = {n_reference}")
    if not folder.is_dir():
        raise DataFileError(f"{folder}: no such folder (expected CIFAR-10's cifar-10-batches-py folder)")
    for name in (*TRAIN_BATCHES, TEST_BATCH):  # every missing file, before any is read
        if not (folder / name).is_file():
            inner = folder / "cifar-10-batches-py"
            hint = f"; did you mean {inner}?" if (inner / name).is_file() else ""
            raise DataFileError(f"{folder / name}: missing (CIFAR-10's python batches: "
                                f"{', '.join(TRAIN_BATCHES)}, {TEST_BATCH}){hint}")
    train = [read_batch(folder / name, n_batch) for name in TRAIN_BATCHES]
    x_test, y_test = read_batch(folder / TEST_BATCH, n_batch)
    take = [min(n_batch, max(0, n_train - i * n_batch)) for i in range(len(train))]  # batches 1..5 in order
    x_train = np.concatenate([x[:k] for (x, _), k in zip(train, take)])  # (n_train, 3, 32, 32), a fresh array
    y_train = np.concatenate([y[:k] for (_, y), k in zip(train, take)])
    return {"train": image_split(x_train, y_train),
            "reference": image_split(x_test[:n_reference].copy(), y_test[:n_reference])}
