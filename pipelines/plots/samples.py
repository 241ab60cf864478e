"""Sample figures: points as a scatter, images as a grid."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # before pyplot: stages draw into PNGs, with no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def scatter_figure(x: np.ndarray, title: str, modes: np.ndarray | None = None, lim: float = 6.0,
                   labels: np.ndarray | None = None):
    """Samples (N, 2) in data units, with the mode centres marked if known, coloured by `labels` if given."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    colour = {"color": "tab:blue"} if labels is None else {"c": labels % 20, "cmap": "tab20", "vmin": 0, "vmax": 19}
    ax.scatter(x[:, 0], x[:, 1], s=0.5, alpha=0.35, rasterized=True, **colour)
    if modes is not None:
        ax.scatter(modes[:, 0], modes[:, 1], s=12, marker="+", color="tab:red", lw=0.8)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=9)
    return fig


def image_grid_figure(x: np.ndarray, title: str, n: int = 64):
    """The first n images (N, C, H, W) in data units (0..255) as a square grid."""
    x = np.clip(x[:n], 0, 255).astype(np.uint8)
    side = int(np.ceil(np.sqrt(len(x))))
    fig, axes = plt.subplots(side, side, figsize=(side * 0.6, side * 0.6))
    for ax, img in zip(np.ravel(axes), list(x) + [None] * (side * side - len(x))):
        ax.axis("off")
        if img is not None:
            ax.imshow(img.transpose(1, 2, 0).squeeze(), cmap="gray" if img.shape[0] == 1 else None)
    fig.suptitle(title, fontsize=8)
    return fig


def inpaint_figure(sources: np.ndarray, hidden: np.ndarray, completions: np.ndarray, title: str, n: int = 8):
    """An inpaint cell's first n images (N, C, H, W, data units 0..255) in three rows: the sources, the masked
    inputs (the sampled pixels, `hidden` (C, H, W), shown grey) and the completions."""
    sources, completions = sources[:n], completions[:n]
    masked = np.where(hidden, 128, sources)
    fig, axes = plt.subplots(3, len(sources), figsize=(len(sources) * 0.7, 3 * 0.7 + 0.4), squeeze=False)
    for row, (name, images) in enumerate((("source", sources), ("masked", masked), ("sample", completions))):
        axes[row, 0].set_title(name, fontsize=6, loc="left")
        for ax, img in zip(axes[row], np.clip(images, 0, 255).astype(np.uint8)):
            ax.axis("off")
            ax.imshow(img.transpose(1, 2, 0).squeeze(), cmap="gray" if img.shape[0] == 1 else None, vmin=0, vmax=255)
    fig.suptitle(title, fontsize=8)
    return fig


def samples_figure(x: np.ndarray, title: str, labels: np.ndarray | None = None):
    """Points (N, 2) as a scatter (coloured by target label if given), images (N, C, H, W) as a grid."""
    return scatter_figure(x, title, labels=labels) if x.ndim == 2 and x.shape[1] == 2 else image_grid_figure(x, title)
