"""Figures the stages write as PNGs (DVC's HTML plots need a CDN, so PNGs are the offline view)."""

from __future__ import annotations

from collections.abc import Collection

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402
from matplotlib.transforms import Bbox  # noqa: E402


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

# The trilemma figure's panel columns, left to right; a row of an unknown sampler goes to "other" (last).
FAMILIES = ("DDPM / iDDPM ancestral", "DDIM", "DDGAN", "classifier-guided", "exact eps* (ceilings)", "other")
SERIES_COLOURS = ("0.15", "tab:red", "tab:blue", "tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:cyan")
SERIES_STYLES = ("-", "--", "-.", ":")
TRILEMMA_METRICS = (("hq_fraction", "quality: high-quality fraction"), ("recall", "coverage: recall (k = 3)"))
# image runs: no modes to be near, so quality is FID through the run's feature extractor (log axis, lower is better)
IMAGE_TRILEMMA_METRICS = (("fid", "quality: FID (log; lower is better)"), ("recall", "coverage: recall (k = 3)"))


def _num(v) -> float:
    """A table value as a float; NaN where it is missing (None, empty, NaN) or not a number."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def _given(v) -> bool:
    """Whether a setting is set: not None, empty or NaN (a csv read leaves NaN where the table is empty)."""
    return v is not None and v != "" and not (isinstance(v, float) and np.isnan(v))


def row_kind(r: dict) -> str:
    """The legend entry of a trilemma row."""
    if r.get("model") == "exact":
        return f"{r['sampler']}, exact eps*"
    if r["sampler"] == "ddgan":
        return "ddgan"
    if _given(r.get("scale")):
        return f"{r['sampler']} + classifier guidance"
    if r["sampler"] == "ddpm":
        v = r.get("variance") if _given(r.get("variance")) else "small"
        return f"ddpm, {v} Σ" + (" (iDDPM)" if v == "learned" else "")
    return r["sampler"]


def row_family(r: dict) -> str:
    """The trilemma figure's panel column of a row (one of FAMILIES), from its model, sampler and scale."""
    if r.get("model") == "exact":
        return FAMILIES[4]
    if r.get("sampler") == "ddgan":
        return FAMILIES[2]
    if _given(r.get("scale")):
        return FAMILIES[3]
    return {"ddpm": FAMILIES[0], "ddim": FAMILIES[1]}.get(r.get("sampler"), FAMILIES[5])


def row_series(r: dict) -> str:
    """The line a row lies on within its family: the rows that differ only in steps (guided rows: in scale)."""
    model, sampler, family = r.get("model") or "", r.get("sampler") or "", row_family(r)
    eta = f", η = {_num(r.get('eta')):g}" if _given(r.get("eta")) else ""
    eta += f", {r['trajectory']}" if _given(r.get("trajectory")) and r["trajectory"] != "uniform" else ""
    var = f", {r['variance']} Σ" if _given(r.get("variance")) else ""
    net = f" ({model} net)" if model not in ("", "ddpm", "exact") else ""
    if family == FAMILIES[4]:
        scale = f", s = {_num(r.get('scale')):g}" if _given(r.get("scale")) else ""
        return f"exact {sampler}{var}{eta}{scale}"
    if family == FAMILIES[2]:
        return "ddgan-T"
    if family == FAMILIES[3]:
        return f"{sampler}-{_num(r.get('steps')):g}{var}{eta}{net}, s ↑"
    if family == FAMILIES[0]:
        return f"{model or sampler}{var}"
    return f"{sampler}{var}{eta}{net}"


def _series_order(r: dict) -> tuple:
    """Where a row sits on its line: by guidance scale for guided rows, else by steps; the cell name breaks ties."""
    key = "scale" if row_family(r) == FAMILIES[3] else "steps"
    v = _num(r.get(key))
    return (np.isnan(v), 0.0 if np.isnan(v) else v, str(r.get("cell")))


def _group(rows: list[dict]) -> dict[str, dict[str, list[dict]]]:
    """Rows by family (in FAMILIES' order, empty ones left out), then by series (first seen first), each ordered."""
    by_family: dict[str, dict[str, list[dict]]] = {f: {} for f in FAMILIES}
    for r in rows:
        by_family[row_family(r)].setdefault(row_series(r), []).append(r)
    return {f: {name: sorted(s, key=_series_order) for name, s in series.items()}
            for f, series in by_family.items() if series}


def _time_axis(rows: list[dict]) -> tuple[float, tuple[float, float]]:
    """The log time axis: where a zero (or negative) wall time is drawn (its left end), and the axis limits."""
    t = np.array([_num(r.get("wall_s_per_1k")) for r in rows])
    t = t[np.isfinite(t) & (t > 0)]
    lo, hi = (t.min(), t.max()) if len(t) else (1e-2, 1.0)
    floor = min(lo / 2.5, hi / 100)  # at least two decades, so that the log axis has major ticks to label
    return floor, (floor / 1.4, hi * 3.0)


def _xy(r: dict, key: str, floor: float) -> tuple[float, float]:
    """A row's point in a panel: wall time (zero drawn at `floor`) and the metric; NaN where either is missing."""
    t = _num(r.get("wall_s_per_1k"))
    return (floor if t <= 0 else t), _num(r.get(key))


def _draw_series(ax, rows: list[dict], key: str, floor: float, style: dict, marked: set[str], norm) -> list:
    """One series' line (in order) and its points, colour = modes covered (grey where unknown); marked rows large
    with a bold edge, the others faded where any row is marked. Returns the points to label, (x, y, cell, bold):
    the marked rows, or the series' endpoints where nothing is marked."""
    xy = np.array([_xy(r, key, floor) for r in rows], dtype=float).reshape(-1, 2)
    ok = np.isfinite(xy).all(axis=1)
    cells = [r.get("cell") for r in rows]
    big = np.array([c in marked for c in cells], dtype=bool)
    faded = bool(marked)
    ax.plot(xy[ok, 0], xy[ok, 1], color=style["color"], ls=style["ls"], lw=1.1, alpha=0.45 if faded else 0.8,
            zorder=2)
    cmap = plt.get_cmap("viridis").with_extremes(bad="lightgrey")
    for sel, look in ((ok & ~big, {"s": 30, "edgecolors": "0.45" if faded else "k", "linewidths": 0.5,
                                   "alpha": 0.55 if faded else 1.0, "zorder": 3}),
                      (ok & big, {"s": 80, "edgecolors": "k", "linewidths": 1.8, "zorder": 4})):
        if sel.any():
            ax.scatter(xy[sel, 0], xy[sel, 1], c=[_num(r.get("modes")) for r, k in zip(rows, sel) if k], cmap=cmap,
                       norm=norm, marker=style["marker"], plotnonfinite=True, **look)
    pick = np.flatnonzero(big) if faded else sorted({0, len(cells) - 1})
    return [(xy[i, 0], xy[i, 1], str(cells[i]), bool(big[i])) for i in pick if ok[i]]


def _obstacles(ax) -> tuple[np.ndarray, np.ndarray]:
    """What a label must keep clear of, in display units: the panel's markers, and points along its lines."""
    markers, lines = [np.empty((0, 2))], [np.empty((0, 2))]
    for coll in ax.collections:
        if len(coll.get_offsets()):
            markers.append(coll.get_offset_transform().transform(np.asarray(coll.get_offsets(), dtype=float)))
    for line in ax.get_lines():
        xy = line.get_transform().transform(np.asarray(line.get_xydata(), dtype=float))  # the ceiling's too
        xy = xy[np.isfinite(xy).all(axis=1)]
        lines += [a + np.linspace(0, 1, 12)[:, None] * (b - a) for a, b in zip(xy[:-1], xy[1:])]
    return np.concatenate(markers), np.concatenate(lines)


# Where a label may go around its point: (dx, dy) directions in points, with its text alignment; tried in order.
LABEL_SPOTS = ((1, 0.3, "left", "bottom"), (1, -0.3, "left", "top"), (-1, 0.3, "right", "bottom"),
               (-1, -0.3, "right", "top"), (0, 1, "center", "bottom"), (0, -1, "center", "top"),
               (0.3, 1, "left", "bottom"), (-0.3, 1, "right", "bottom"), (0.3, -1, "left", "top"),
               (-0.3, -1, "right", "top"), (0.7, 0.7, "left", "bottom"), (0.7, -0.7, "left", "top"),
               (-0.7, 0.7, "right", "bottom"), (-0.7, -0.7, "right", "top"))


def _box_distance(box, pts: np.ndarray) -> np.ndarray:
    """Each display point's distance to a box (0 inside it)."""
    dx = np.maximum(np.maximum(box.x0 - pts[:, 0], pts[:, 0] - box.x1), 0)
    dy = np.maximum(np.maximum(box.y0 - pts[:, 1], pts[:, 1] - box.y1), 0)
    return np.hypot(dx, dy)


def _clashes(box, anchor: np.ndarray, placed: list, obstacles: tuple[np.ndarray, np.ndarray], frame) -> int:
    """How badly a label's box sits: outside the panel worst, then each label it overlaps, then each other marker
    under it or nearer to it than its own point (which would misread it), then each line point under it; 0 where
    it is clear."""
    if box.x0 < frame.x0 or box.x1 > frame.x1 or box.y0 < frame.y0 or box.y1 > frame.y1:
        return 10 ** 6
    markers, lines = obstacles
    others = markers[np.hypot(*(markers - anchor).T) > 1.0]
    own = _box_distance(box, anchor[None])[0]
    misread = int((_box_distance(box, others) < max(own, 5.0)).sum())
    under = int((_box_distance(box, lines) < 2.0).sum())
    return 1000 * sum(box.overlaps(p) for p in placed) + 200 * misread + under


def _label_box(anchor: np.ndarray, size: tuple[float, float], offset: np.ndarray, ha: str, va: str) -> Bbox:
    """The display box of a text of `size` (width, height) set `offset` away from `anchor`, aligned ha / va."""
    w, h = size
    x0 = anchor[0] + offset[0] - {"left": 0.0, "center": w / 2, "right": w}[ha]
    y0 = anchor[1] + offset[1] - {"bottom": 0.0, "top": h}[va]
    return Bbox.from_bounds(x0, y0, w, h)


def _place_labels(ax, points: list, renderer) -> None:
    """Label each (x, y, text, bold) point where its text overlaps no other label, marker or line if any spot is
    free (nearest first, with a leader line when away from the point), else where it clashes least."""
    obstacles, frame, placed = _obstacles(ax), ax.get_window_extent(renderer), []
    px_per_pt = ax.figure.dpi / 72
    for x, y, text, bold in sorted(points, key=lambda p: (-p[1], p[0], p[2])):
        style = {"fontsize": 7.5 if bold else 6.5, "fontweight": "bold" if bold else "normal",
                 "color": "k" if bold else "0.3", "zorder": 6}
        probe = ax.text(x, y, text, **style)
        size = probe.get_window_extent(renderer).size
        probe.remove()
        anchor, best = ax.transData.transform((x, y)), None
        for radius in (6, 14, 24, 36, 50, 66, 85, 105):
            for dx, dy, ha, va in LABEL_SPOTS:
                box = _label_box(anchor, size, np.array([dx, dy]) * radius * px_per_pt, ha, va)
                score = _clashes(box, anchor, placed, obstacles, frame)
                if best is None or score < best[0]:
                    best = (score, box, (dx * radius, dy * radius), ha, va, radius)
                if score == 0:
                    break
            if best[0] == 0:
                break
        _, box, offset, ha, va, radius = best
        leader = {"arrowstyle": "-", "lw": 0.7, "color": "0.35", "shrinkA": 1, "shrinkB": 5} if radius > 6 else None
        ax.annotate(text, (x, y), xytext=offset, textcoords="offset points", ha=ha, va=va, arrowprops=leader, **style)
        placed.append(box.expanded(1.0, 1.0).padded(1.5))


def _family_legend(ax, series: dict[str, list[dict]], styles: dict[str, dict]) -> None:
    """The column's series under its lower panel: line style and marker, with the rows' step (or scale) span."""
    handles = []
    for name, rows in series.items():
        key = "scale" if row_family(rows[0]) == FAMILIES[3] else "steps"
        vals = [v for v in (_num(r.get(key)) for r in rows) if np.isfinite(v)]
        span = (f"{key} {min(vals):g}" + (f"→{max(vals):g}" if max(vals) > min(vals) else "")) if vals else ""
        handles.append(plt.Line2D([], [], color=styles[name]["color"], ls=styles[name]["ls"],
                                  marker=styles[name]["marker"], markerfacecolor="0.8", markeredgecolor="k",
                                  label=f"{name}" + (f"  [{span}]" if span else "")))
    if handles:
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.2), fontsize=7, frameon=False,
                  handlelength=2.6)


def _series_styles(series: dict[str, list[dict]]) -> dict[str, dict]:
    """Each series' line colour and style (by its place in the column) and marker (by the kind of its rows)."""
    return {name: {"color": SERIES_COLOURS[i % len(SERIES_COLOURS)], "ls": SERIES_STYLES[i % len(SERIES_STYLES)],
                   "marker": KIND_MARKERS.get(row_kind(rows[0]), "o")} for i, (name, rows) in enumerate(series.items())}


def _family_column(axes, family: str, series: dict[str, list[dict]], ceiling: dict | None, floor: float,
                   marked: set[str], norm, metrics: tuple = TRILEMMA_METRICS) -> list:
    """One family's column: quality above coverage, the ceiling dashed, each series a line of points; the title
    counts its rows and a legend under it names its series. Returns (panel, points to label) per panel."""
    styles, labels = _series_styles(series), []
    for ax, (key, label) in zip(axes, metrics):
        if ceiling is not None and np.isfinite(_num(ceiling.get(key))):
            ax.axhline(_num(ceiling.get(key)), color="grey", ls="--", lw=0.9, zorder=1)
        labels.append((ax, [p for name, rows in series.items()
                            for p in _draw_series(ax, rows, key, floor, styles[name], marked, norm)]))
        ax.grid(alpha=0.3, which="both")
        ax.set_ylabel(label if ax.get_subplotspec().is_first_col() else "")
    axes[-1].set_xlabel("wall time per 1,000 samples [s]")
    n_rows = len({r.get("cell") for rows in series.values() for r in rows})
    axes[0].set_title(f"{family}  ({n_rows} row{'' if n_rows == 1 else 's'})" if n_rows else family, fontsize=9.5)
    _family_legend(axes[-1], series, styles)
    return labels


def _figure_legend(fig, ceiling: dict | None, marked: set[str], left: float, top: float) -> None:
    """Under the title: the ceiling's line and, where rows are marked, how marked and other rows are drawn."""
    handles = [plt.Line2D([], [], ls="--", color="grey", label="train split (ceiling)")] if ceiling else []
    handles += [plt.Line2D([], [], ls="", marker="o", markersize=8, markerfacecolor="0.8", markeredgecolor="k",
                           markeredgewidth=1.8, label="rows the claims read (labelled)"),
                plt.Line2D([], [], ls="", marker="o", markersize=5, markerfacecolor="0.8", markeredgecolor="0.45",
                           alpha=0.55, label="other rows")] if marked else []
    if handles:
        fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(left, top), ncol=len(handles), fontsize=8,
                   frameon=False, borderaxespad=0, handletextpad=0.4, columnspacing=1.2)


def trilemma_figure(rows: list[dict], ceiling: dict | None = None, marked: Collection[str] = (),
                    metrics: tuple = TRILEMMA_METRICS):
    """The trilemma, one panel column per family of rows (DDPM/iDDPM ancestral, DDIM, DDGAN, guided, exact eps*;
    empty ones left out): quality (high-quality fraction, top) and coverage (recall, bottom) against wall time per
    1,000 samples on one log axis (a zero time at its left end, a missing one or value left out). A line joins
    each series' rows in order of steps (guided rows: of scale), so the steps-vs-quality trade reads along it;
    colour = modes covered; `ceiling` (the train split) is a dashed line. The `marked` cells (the rows the papers'
    claims read) are large, bold-edged and labelled, the others faded and unlabelled; with none marked, each
    series' endpoints are labelled. Labels are placed so that none overlaps another. `metrics`: the quality and
    coverage columns with their axis labels (IMAGE_TRILEMMA_METRICS for images: FID on a log axis)."""
    marked = {str(c) for c in marked} & {str(r.get('cell')) for r in rows}  # a cell not in the rows marks none
    families = _group(rows) or {"no rows": {}}
    floor, xlim = _time_axis(rows)
    modes = [_num(r.get("modes")) for r in rows] + [_num((ceiling or {}).get("modes")), 1.0]
    norm = plt.Normalize(0, np.nanmax(modes))
    width, height = 3.5 * len(families) + 1.9, 8.2  # inches: the margins below are fixed in inches too
    fig, axes = plt.subplots(2, len(families), figsize=(width, height), sharex=True, sharey="row", squeeze=False)
    left, right = 0.8 / width, 1 - 1.1 / width
    fig.subplots_adjust(left=left, right=right, top=1 - 0.95 / height, bottom=2.05 / height, wspace=0.06, hspace=0.08)
    labels = [lab for j, (family, series) in enumerate(families.items())
              for lab in _family_column(axes[:, j], family, series, ceiling, floor, marked, norm, metrics)]
    axes[0][0].set_xscale("log")
    axes[0][0].set_xlim(*xlim)
    axes[0][0].xaxis.set_minor_formatter(NullFormatter())
    for row, (key, _) in zip(axes, metrics):
        if key == "fid":  # unbounded above, and its differences that matter are ratios
            row[0].set_yscale("log")
        else:
            row[0].set_ylim(-0.04, 1.1)
    renderer = fig.canvas.get_renderer()
    for ax, points in labels:
        _place_labels(ax, points, renderer)
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap="viridis"), label="modes covered",
                 cax=fig.add_axes([right + 0.2 / width, 2.05 / height, 0.12 / width, 1 - 3.0 / height]))
    fig.suptitle("Trilemma: quality and coverage against sampling time (log), one column per family; "
                 "colour = modes covered", fontsize=10.5, x=left, ha="left", y=1 - 0.12 / height)
    _figure_legend(fig, ceiling, marked, left, 1 - 0.38 / height)
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
