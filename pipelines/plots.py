"""Figures the stages write as PNGs (DVC's HTML plots need a CDN, so PNGs are the offline view)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def loss_curve_figure(steps: list[int], losses: list[float], title: str):
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, losses, lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    return fig


def scatter_figure(x: np.ndarray, title: str, modes: np.ndarray | None = None, lim: float = 6.0):
    """Samples (N, 2) in data units, with the mode centres marked if known."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(x[:, 0], x[:, 1], s=0.5, alpha=0.35, color="tab:blue", rasterized=True)
    if modes is not None:
        ax.scatter(modes[:, 0], modes[:, 1], s=12, marker="+", color="tab:red", lw=0.8)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=9)
    return fig


def trilemma_figure(rows: list[dict], ceiling: dict | None = None):
    """Quality (high-quality fraction) against wall time per 1k samples (log); colour = recall, marker = sampler."""
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    # (sampler, model) -> marker; the exact-eps* rows are the samplers' ceilings, not trained models
    markers = {("ddpm", "ema"): "o", ("ddim", "ema"): "s", ("ddpm", "exact"): "P", ("ddim", "exact"): "X"}
    sc = None
    for i, r in enumerate(sorted(rows, key=lambda r: (r["wall_s_per_1k"], r["hq_fraction"]))):
        sc = ax.scatter(r["wall_s_per_1k"], r["hq_fraction"], c=[r["recall"]], cmap="viridis", vmin=0, vmax=1,
                        marker=markers.get((r["sampler"], r.get("model", "ema")), "D"), s=30 + 2 * r["modes"],
                        edgecolor="k", lw=0.5, zorder=3)
        ax.annotate(r["cell"], (r["wall_s_per_1k"], r["hq_fraction"]), fontsize=7, textcoords="offset points",
                    xytext=(6, 6 if i % 2 else -10))
    if ceiling is not None:
        ax.axhline(ceiling["hq_fraction"], color="grey", ls="--", lw=0.8, label="train split (ceiling)")
    for (sampler, model), m in markers.items():
        if any(r["sampler"] == sampler and r.get("model", "ema") == model for r in rows):
            ax.scatter([], [], marker=m, color="grey", label=sampler if model == "ema" else f"{sampler}, exact eps*")
    ax.legend(loc="center right", fontsize=8)
    t = [r["wall_s_per_1k"] for r in rows]
    ax.set_xscale("log")
    ax.set_xlim(min(t) / 1.6, max(t) * 4)
    ax.set_xlabel("wall time per 1,000 samples [s] (log)")
    ax.set_ylabel("high-quality fraction (within 3 std)")
    ax.set_ylim(-0.03, 1.05)
    ax.grid(alpha=0.3, which="both")
    if sc is not None:
        fig.colorbar(sc, ax=ax, label="recall (k=3)")
    ax.set_title("Trilemma: quality vs sampling time; colour = recall, size = modes covered", fontsize=9)
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


def samples_figure(x: np.ndarray, title: str):
    """Points (N, 2) as a scatter, images (N, C, H, W) as a grid."""
    return scatter_figure(x, title) if x.ndim == 2 and x.shape[1] == 2 else image_grid_figure(x, title)
