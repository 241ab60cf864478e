"""Figures the stages write as PNGs (DVC's HTML plots need a CDN, so PNGs are the offline view)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
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


# A marker per kind of row: sampler, reverse variance for ancestral sampling, guidance, exact eps* ceilings apart.
KIND_MARKERS = {"ddpm, small Σ": "o", "ddpm, large Σ": "v", "ddpm, learned Σ (iDDPM)": "*", "ddim": "s",
                "ddpm + classifier guidance": "p", "ddim + classifier guidance": "D",
                "ddpm, exact eps*": "P", "ddim, exact eps*": "X", "ddgan": "h"}


def row_kind(r: dict) -> str:
    """The legend entry of a trilemma row."""
    if r.get("model") == "exact":
        return f"{r['sampler']}, exact eps*"
    if r["sampler"] == "ddgan":
        return "ddgan"
    if r.get("scale") is not None:
        return f"{r['sampler']} + classifier guidance"
    if r["sampler"] == "ddpm":
        v = r.get("variance") or "small"
        return f"ddpm, {v} Σ" + (" (iDDPM)" if v == "learned" else "")
    return r["sampler"]


def trilemma_figure(rows: list[dict], ceiling: dict | None = None):
    """The trilemma in two panels over one time axis (log): quality (high-quality fraction) and coverage (recall);
    colour = modes covered, marker = kind of row, DDGAN rows outlined in red and labelled in bold."""
    fig, axes = plt.subplots(1, 2, figsize=(14, 5.6), sharex=True)
    n_modes = max([r["modes"] for r in rows] + [(ceiling or {}).get("modes", 0), 1])
    sc = None
    for ax, (key, label) in zip(axes, [("hq_fraction", "quality: high-quality fraction (within 3 std)"),
                                       ("recall", "coverage: recall (k = 3)")]):
        for i, r in enumerate(sorted(rows, key=lambda r: (r["wall_s_per_1k"], r[key]))):
            gan = row_kind(r) == "ddgan"  # the rows the trilemma is about: DDGAN against the diffusion samplers
            sc = ax.scatter(r["wall_s_per_1k"], r[key], c=[r["modes"]], cmap="viridis", vmin=0, vmax=n_modes,
                            marker=KIND_MARKERS.get(row_kind(r), "D"), s=90 if gan else 36,
                            edgecolor="red" if gan else "k", lw=1.6 if gan else 0.5, zorder=4 if gan else 3)
            ax.annotate(r["cell"], (r["wall_s_per_1k"], r[key]), textcoords="offset points",
                        xytext=(7, 5 if i % 2 else -9), fontsize=8 if gan else 5.5,
                        fontweight="bold" if gan else "normal", color="darkred" if gan else "0.25")
        if ceiling is not None:
            ax.axhline(ceiling[key], color="grey", ls="--", lw=0.8)  # in the figure legend's handles below
        ax.set_xscale("log")
        ax.set_xlabel("speed: wall time per 1,000 samples [s] (log)")
        ax.set_ylabel(label)
        ax.set_ylim(-0.03, 1.05)
        ax.grid(alpha=0.3, which="both")
    t = [r["wall_s_per_1k"] for r in rows]
    axes[0].set_xlim(min(t) / 1.6, max(t) * 3)
    kinds = {row_kind(r) for r in rows}
    handles = [plt.Line2D([], [], ls="--", color="grey", label="train split (ceiling)")] if ceiling else []
    handles += [plt.Line2D([], [], ls="", marker=m, color="grey", markeredgecolor="red" if k == "ddgan" else "k",
                           label=k) for k, m in KIND_MARKERS.items() if k in kinds]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 5), fontsize=8, frameon=False)
    fig.subplots_adjust(bottom=0.2, top=0.92, wspace=0.14, right=0.9)
    if sc is not None:
        fig.colorbar(sc, cax=fig.add_axes([0.915, 0.2, 0.012, 0.72]), label="modes covered")
    fig.suptitle("Trilemma: quality and coverage against sampling time; colour = modes covered", fontsize=10)
    return fig


def guidance_figure(series: dict[str, list[dict]]):
    """ADM Table 4's trade-off: precision, recall, target-hit rate and high-quality fraction against the guidance
    scale, one line per guided sampler setting (`series`: name -> its rows, each with `scale`)."""
    metrics = [("precision", "precision (k=3)"), ("recall", "recall (k=3)"), ("target_hit", "target-hit rate"),
               ("hq_fraction", "high-quality fraction")]
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
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=7)
    fig.suptitle("Classifier guidance (ADM Alg. 1 / 2): fidelity against diversity as s grows", fontsize=10)
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


def samples_figure(x: np.ndarray, title: str, labels: np.ndarray | None = None):
    """Points (N, 2) as a scatter (coloured by target label if given), images (N, C, H, W) as a grid."""
    return scatter_figure(x, title, labels=labels) if x.ndim == 2 and x.shape[1] == 2 else image_grid_figure(x, title)
