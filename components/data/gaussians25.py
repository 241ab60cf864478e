"""The 25-Gaussians toy (VEEGAN, Srivastava et al. 2017; PacGAN, Lin et al. 2018): a uniform mixture of 25 isotropic
Gaussians on a 5x5 grid, the embedded default data set (params.yaml data.name gaussians25)."""

from __future__ import annotations

import numpy as np

from components.data.dataset import Dataset


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
