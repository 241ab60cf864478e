"""A data set's split as plain arrays: samples x (N, ...) in data units, labels y (N,), and metadata.

A split also names its affine map to model space, `model = (x - shift) * scale`, so every
network and sampler works in normalised units while every metric stays in data units. Points are float32;
images are uint8 (N, C, H, W) in [0, 255], mapped to [-1, 1] (DDPM §3.3) by the one image map of `image_split`.
Each data set's module (gaussians25, swiss_roll, digits, cifar10) builds its splits from this; components/data/datasets.py
names them.
"""

from __future__ import annotations

from dataclasses import dataclass

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
