"""The table's figures of one sweep each: the guidance trade-off against the scale (ADM Table 4), and the
variational bound's terms against t (DDPM eq. 5)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # before pyplot: stages draw into PNGs, with no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def guidance_figure(series: dict[str, list[dict]]):
    """ADM Table 4's trade-off: precision, recall, target-hit rate and a quality measure against the guidance scale
    (a mixture's high-quality fraction; on images the classifier score, the Inception Score's formula), one line per
    guided sampler setting (`series`: name -> its rows, each with `scale`)."""
    points = all("hq_fraction" in r for rows in series.values() for r in rows)
    metrics = [("precision", "precision (k=3)"), ("recall", "recall (k=3)"), ("target_hit", "target-hit rate"),
               ("hq_fraction", "high-quality fraction") if points else ("classifier_score", "classifier score")]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.4))
    scales = sorted({r["scale"] for rows in series.values() for r in rows})
    for ax, (key, label) in zip(axes, metrics):
        for name, rows in series.items():
            rows = sorted(rows, key=lambda r: r["scale"])
            exact = rows[0].get("model") == "exact"  # the ceiling: exact eps* and exact p(y | x_t)
            ax.plot([r["scale"] for r in rows], [r[key] for r in rows], marker="*" if exact else "o",
                    ms=9 if exact else 3, lw=1, ls=":" if exact else "-", label=name)
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xticks(scales, [f"{s:g}" for s in scales], fontsize=7)
        ax.set_xlabel("guidance scale s (symlog)")
        ax.set_ylabel(label)
        if key != "classifier_score":  # the others are shares
            ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=7)
    fig.suptitle("Classifier guidance (ADM Alg. 1 / 2): fidelity against diversity as s grows", fontsize=10)
    fig.tight_layout()
    return fig


def vlb_terms_figure(terms: dict[str, np.ndarray], T: int):
    """Each chain's bound term L_{t-1} (nats/dim, model space) against t on log axes: where the bounds differ."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, values in terms.items():
        t = np.arange(1, len(values) + 1)  # L_{t-1} at index t-1; index 0 is the decoder L_0
        ax.plot(t[1:], values[1:], lw=1, label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"t (of T = {T}); the decoder L_0 is left out")
    ax.set_ylabel("L_{t-1} [nats/dim, model space]")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    ax.set_title("Variational-bound terms per step (DDPM eq. 5) of the full-length ancestral chains", fontsize=9)
    return fig
