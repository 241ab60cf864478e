"""The trilemma figure: quality and coverage against sampling time, one panel pair per family of rows.

A row's family, series and legend entry come from its settings (`row_family`, `row_series`, `row_kind`); the
table stage (pipelines/stages/table.py) writes the same families into trilemma.csv. Labels are placed by
pipelines/plots/labels.py.
"""

from __future__ import annotations

from collections.abc import Collection

import matplotlib

matplotlib.use("Agg")  # before pyplot: stages draw into PNGs, with no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import LogLocator, NullFormatter  # noqa: E402

from pipelines.plots.labels import place_labels  # noqa: E402

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
    return floor, (floor / 1.4, hi * 4.0)  # room right of the slowest rows for their labels


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


LEGEND_PT = 9.0  # about 14 px at the saved dpi (110)


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
    if handles:  # below the time axis' tick labels and title, which take XAXIS_IN
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -XAXIS_IN / PANEL_IN[1]),
                  fontsize=LEGEND_PT, frameon=False, handlelength=2.6, borderaxespad=0)


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
    axes[0].set_title(f"{family}  ({n_rows} row{'' if n_rows == 1 else 's'})" if n_rows else family, fontsize=10.5)
    _family_legend(axes[-1], series, styles)
    return labels


def _figure_legend(fig, ceiling: dict | None, marked: set[str], left: float, top: float) -> None:
    """Under the title: the ceiling's line and, where rows are marked, how marked and other rows are drawn."""
    handles = [plt.Line2D([], [], ls="--", color="grey", label=f"{ceiling.get('sampler', 'train split')} (ceiling)")
               ] if ceiling else []
    handles += [plt.Line2D([], [], ls="", marker="o", markersize=8, markerfacecolor="0.8", markeredgecolor="k",
                           markeredgewidth=1.8, label="rows the claims read (labelled)"),
                plt.Line2D([], [], ls="", marker="o", markersize=5, markerfacecolor="0.8", markeredgecolor="0.45",
                           alpha=0.55, label="other rows")] if marked else []
    if handles:
        fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(left, top), ncol=len(handles),
                   fontsize=LEGEND_PT, frameon=False, borderaxespad=0, handletextpad=0.4, columnspacing=1.2)


# The trilemma figure's layout in inches. Families go in bands of up to TRILEMMA_COLUMNS panel columns, so that the
# saved PNG (dpi 110, bbox tight) stays within a 1,440-px screen: 0.85 + 3 x 3.75 + 2 x 0.1 + 0.2 in = 1,375 px.
TRILEMMA_COLUMNS = 3
PANEL_IN = (3.75, 2.7)  # a panel's width and height
LEFT_IN, RIGHT_IN, WGAP_IN, HGAP_IN = 0.85, 0.2, 0.1, 0.12  # y axis' margin, right margin, between panels
HEAD_IN, BAR_IN, TITLE_IN, XAXIS_IN = 0.75, 0.45, 0.35, 0.52  # title and key; colour bar; column title; time axis
LEGEND_LINE_IN, FOOT_IN = 0.21, 0.15  # a family legend's line at LEGEND_PT; below the legend


def _bands(families: list[str]) -> list[list[str]]:
    """The families in bands, left to right then top to bottom: as few bands as TRILEMMA_COLUMNS allows, as even
    as can be (5 families: 3 + 2)."""
    n_bands = -(-len(families) // TRILEMMA_COLUMNS)
    per = -(-len(families) // n_bands)
    return [families[i:i + per] for i in range(0, len(families), per)]


def _band_height(lines: int) -> float:
    """A band's height in inches: its column titles, the panel pair, the time axis and a legend of `lines` lines."""
    return TITLE_IN + 2 * PANEL_IN[1] + HGAP_IN + XAXIS_IN + LEGEND_LINE_IN * lines + FOOT_IN


def _panel_grid(fig, bands: list[list[str]], heights: list[float], top: float) -> np.ndarray:
    """The panels, `top` inches down, (2, families) in band order: quality above coverage, one time axis for all,
    one y axis per metric; tick labels only on a band's outer edges."""
    width, height = fig.get_size_inches()
    ncols = max(len(b) for b in bands)
    right = (LEFT_IN + ncols * PANEL_IN[0] + (ncols - 1) * WGAP_IN) / width
    axes = []
    for band, band_height in zip(bands, heights):
        gs = fig.add_gridspec(2, ncols, left=LEFT_IN / width, right=right, top=1 - (top + TITLE_IN) / height,
                              bottom=1 - (top + TITLE_IN + 2 * PANEL_IN[1] + HGAP_IN) / height,
                              wspace=WGAP_IN / PANEL_IN[0], hspace=HGAP_IN / PANEL_IN[1])
        for j in range(len(band)):
            first = axes[0] if axes else (None, None)
            quality = fig.add_subplot(gs[0, j], sharex=first[0], sharey=first[0])
            pair = [quality, fig.add_subplot(gs[1, j], sharex=quality, sharey=first[1])]
            pair[0].tick_params(which="both", labelbottom=False)
            for ax in pair if j else ():  # a band's first column carries the y tick labels
                ax.tick_params(which="both", labelleft=False)
            axes.append(pair)
        top += band_height
    return np.array(axes, dtype=object).T


def _header(fig, ceiling: dict | None, marked: set[str], norm: plt.Normalize | None) -> None:
    """Above the panels: the title, the key to the ceiling and the marks, and under it (where `norm` is given: some
    row has modes) the colour bar of modes covered."""
    width, height = fig.get_size_inches()
    left = LEFT_IN / width
    fig.suptitle("Trilemma: quality (top) and coverage (bottom) against sampling time (log), a panel pair per family",
                 fontsize=12, x=left, ha="left", y=1 - 0.1 / height, va="top")
    _figure_legend(fig, ceiling, marked, left, 1 - 0.42 / height)
    if norm is not None:
        cax = fig.add_axes([left + 1.9 / width, 1 - 0.88 / height, 2.4 / width, 0.13 / height])
        fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap="viridis"), cax=cax, orientation="horizontal")
        cax.tick_params(labelsize=LEGEND_PT)
        cax.text(-0.04, 0.5, "colour: modes covered", transform=cax.transAxes, ha="right", va="center",
                 fontsize=LEGEND_PT)


def trilemma_figure(rows: list[dict], ceiling: dict | None = None, marked: Collection[str] = (),
                    metrics: tuple = TRILEMMA_METRICS):
    """The trilemma, one panel pair per family of rows (DDPM/iDDPM ancestral, DDIM, DDGAN, guided, exact eps*;
    empty ones left out), in bands of up to TRILEMMA_COLUMNS: quality (high-quality fraction, top) and coverage
    (recall, bottom) against wall time per 1,000 samples on one log axis (a zero time at its left end, a missing
    one or value left out). A line joins each series' rows in order of steps (guided rows: of scale), so the
    steps-vs-quality trade reads along it; colour = modes covered; `ceiling` (row `data`) is a dashed line.
    The `marked` cells (the rows the papers' claims read) are large, bold-edged and labelled, the others faded and
    unlabelled; with none marked, each series' endpoints are labelled. Labels are placed so that none overlaps
    another. `metrics`: the quality and coverage columns with their axis labels (IMAGE_TRILEMMA_METRICS for
    images: FID on a log axis). Saved at dpi 110 it is at most 1,375 px wide."""
    marked = {str(c) for c in marked} & {str(r.get('cell')) for r in rows}  # a cell not in the rows marks none
    families = _group(rows) or {"no rows": {}}
    floor, xlim = _time_axis(rows)
    modes = np.array([_num(r.get("modes")) for r in rows] + [_num((ceiling or {}).get("modes"))])
    norm = plt.Normalize(0, np.nanmax(np.append(modes, 1.0)))
    head = HEAD_IN + (BAR_IN if np.isfinite(modes).any() else 0.0)  # image rows have no modes: no colour bar
    bands = _bands(list(families))
    heights = [_band_height(max(len(families[f]) for f in band)) for band in bands]
    ncols = max(len(b) for b in bands)
    fig = plt.figure(figsize=(LEFT_IN + ncols * PANEL_IN[0] + (ncols - 1) * WGAP_IN + RIGHT_IN, head + sum(heights)))
    axes = _panel_grid(fig, bands, heights, head)
    axes[0][0].set_xscale("log")  # scales and limits first: autoscaling ten shared panels per series is slow
    axes[0][0].set_xlim(*xlim)
    axes[0][0].xaxis.set_minor_locator(LogLocator(subs=(2, 5)))  # a light grid, and fewer ticks to draw
    axes[0][0].xaxis.set_minor_formatter(NullFormatter())
    for row, (key, _) in zip(axes, metrics):
        if key == "fid":  # unbounded above, and its differences that matter are ratios
            row[0].set_yscale("log")
        else:
            row[0].set_ylim(-0.04, 1.16)  # room above the rows near 1 for their labels
    labels = [lab for j, (family, series) in enumerate(families.items())
              for lab in _family_column(axes[:, j], family, series, ceiling, floor, marked, norm, metrics)]
    renderer = fig.canvas.get_renderer()
    for ax, points in labels:
        place_labels(ax, points, renderer)
    _header(fig, ceiling, marked, norm if head > HEAD_IN else None)
    return fig
