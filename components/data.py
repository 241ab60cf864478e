"""Data sets as plain arrays: samples x (N, ...) in data units, labels y (N,), and metadata.

A data set also names its affine map to model space, `model = (x - shift) * scale`, so every
network and sampler works in normalised units while every metric stays in data units.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Dataset:
    """One split: samples, labels, the model-space map and, for mixtures, the mode centres."""

    x: np.ndarray  # (N, ...) float32, data units
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
    return ((x - shift) * scale).astype(np.float32)


def to_data(x: np.ndarray, shift: float, scale: float) -> np.ndarray:
    """Model space -> data units: x / scale + shift."""
    return (x / scale + shift).astype(np.float32)


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


DATASETS = {"gaussians25": gaussians25_splits}
MIXTURES = ("gaussians25",)  # data sets whose splits carry modes and mode_std: an exact eps* exists
# How L_0 scores each data set (components/likelihood.py DECODERS): real-valued points get the
# continuous Gaussian density; 8-bit images will get the discretized decoder (bits/dim).
LIKELIHOOD_DECODERS = {"gaussians25": "continuous"}
