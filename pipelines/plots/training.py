"""Training figures: loss curves, DDGAN's losses per t, and the noise-aware classifier's accuracy per t-range.

Figures are PNGs (DVC's HTML plots need a CDN, so PNGs are the offline view), saved by pipelines/plumbing/atomic.py.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # before pyplot: stages draw into PNGs, with no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def loss_curve_figure(steps: list[int], series: dict[str, list[float]], title: str):
    """Each named series against step, one panel each; log scale where a series stays positive."""
    fig, axes = plt.subplots(1, len(series), figsize=(6 * len(series), 3.5), squeeze=False)
    for ax, (name, values) in zip(axes[0], series.items()):
        ax.plot(steps, values, lw=1)
        if min(values) > 0:
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    return fig


def losses_by_t_figure(steps: list[int], by_t: dict[str, dict[str, list[float]]], title: str):
    """One panel per loss term, one line per t (and the batch mean, `all`, in black): DDGAN's per-t stability view."""
    fig, axes = plt.subplots(1, len(by_t), figsize=(5 * len(by_t), 3.5), squeeze=False)
    for ax, (term, series) in zip(axes[0], by_t.items()):
        for t, values in series.items():
            style = {"color": "k", "lw": 1.6} if t == "all" else {"lw": 0.9, "alpha": 0.85}
            ax.plot(steps, values, label=t.replace("t", "t = ") if t != "all" else "all t", **style)
        values = np.concatenate([np.asarray(v, dtype=float) for v in series.values()])
        if term == "r1" and np.all(values[~np.isnan(values)] > 0):  # R1 spans decades
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel(term)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def accuracy_by_t_figure(edges: np.ndarray, curves: dict[str, np.ndarray], T: int):
    """Held-out accuracy of the noise-aware classifier per t-range (steps), with chance and, if known, Bayes."""
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    style = {"accuracy": {"lw": 2.5, "color": "tab:blue", "alpha": 0.7}, "chance": {"ls": "--", "color": "grey"},
             "bayes_accuracy": {"ls": ":", "lw": 1.5, "color": "k"}}
    for name, acc in curves.items():
        ax.stairs(acc, edges, label=name.replace("_", " "), **style.get(name, {}))
    ax.set_xlim(0, T)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(f"t (of T = {T})")
    ax.set_ylabel("top-1 accuracy, reference split")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_title("Noise-aware classifier p_phi(y | x_t, t): accuracy per t-range", fontsize=9)
    return fig
