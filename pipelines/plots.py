"""Figures the stages write as PNGs (DVC's HTML plots need a CDN, so PNGs are the offline view)."""

from __future__ import annotations

from collections.abc import Collection

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import LogLocator, NullFormatter  # noqa: E402


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


def _obstacles(ax) -> tuple[np.ndarray, np.ndarray]:
    """What a label must keep clear of, in display units: the panel's markers, and points along its lines."""
    markers, lines = [np.empty((0, 2))], [np.empty((0, 2))]
    for coll in ax.collections:
        if len(coll.get_offsets()):
            markers.append(coll.get_offset_transform().transform(np.asarray(coll.get_offsets(), dtype=float)))
    for line in ax.get_lines():
        xy = line.get_transform().transform(np.asarray(line.get_xydata(), dtype=float))  # the ceiling's too
        xy = xy[np.isfinite(xy).all(axis=1)]
        lines += [_segment(a, b) for a, b in zip(xy[:-1], xy[1:])]
    return np.concatenate(markers), np.concatenate(lines)


def _segment(a: np.ndarray, b: np.ndarray, n: int = 12) -> np.ndarray:
    """n points evenly along the segment from a to b, both ends included."""
    return a + np.linspace(0, 1, n)[:, None] * (b - a)


# Where a label may go around its point: (dx, dy) directions, each with the text alignment that keeps the text on
# that side of the point; at each radius, tried in this order.
LABEL_SPOTS = tuple((round(np.cos(a), 3), round(np.sin(a), 3), "left" if np.cos(a) > 0.3 else
                     "right" if np.cos(a) < -0.3 else "center", "bottom" if np.sin(a) > 0.25 else
                     "top" if np.sin(a) < -0.25 else "center") for a in np.radians(np.arange(15, 375, 15)))
# How far a label may go from its point, in points, nearest first: beyond the first a leader line joins them.
LABEL_RADII = (6, 10, 15, 21, 28, 36, 45, 55, 66, 78, 92, 108, 126, 146, 170)
FORBIDDEN = 10 ** 6  # a label outside its panel or on another label: chosen only where no spot is free of both
# What a label's flaws cost (see _Labels), besides leaving its panel or lying on another label (FORBIDDEN): each
# point of distance from its point; another row's marker under it or, without a leader line, hardly farther from it
# than its own point (it would seem to label that one); with a leader line, another row's marker close by and nearer
# than its own point; a line under it (per point); another label's leader line through it; and its own leader line
# through another label, across another leader line or over another row's marker.
PER_PT, MISREAD, AMBIGUOUS, ON_LINE, ON_LEADER, THROUGH, CROSSING, OVER = 1.0, 200, 40, 1, 100, 300, 30, 5
REFINE_PASSES = 4  # rounds of moving each label again once the others are placed, at most
COINCIDE_PT = 4.5  # points nearer than this (about a large marker's radius) overlap so much that they share a label
LABEL_PT, LEGEND_PT = 8.5, 9.0  # about 13 and 14 px at the saved dpi (110)
_ALIGN = {"left": 0.0, "center": 0.5, "right": 1.0, "bottom": 0.0, "top": 1.0}
_SPOT_RADII = np.repeat(np.array(LABEL_RADII, dtype=float), len(LABEL_SPOTS))  # every spot at every radius
_SPOT_OFFSETS = np.tile(np.array([s[:2] for s in LABEL_SPOTS]), (len(LABEL_RADII), 1)) * _SPOT_RADII[:, None]
_SPOT_ALIGN = np.tile(np.array([(_ALIGN[s[2]], _ALIGN[s[3]]) for s in LABEL_SPOTS]), (len(LABEL_RADII), 1))
_LEADER = _SPOT_RADII > LABEL_RADII[0]


def _box_distances(boxes: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """(boxes, points): each display point's distance to each box (x0, y0, x1, y1), 0 inside it."""
    dx = np.maximum(np.maximum(boxes[:, None, 0] - pts[None, :, 0], pts[None, :, 0] - boxes[:, None, 2]), 0)
    dy = np.maximum(np.maximum(boxes[:, None, 1] - pts[None, :, 1], pts[None, :, 1] - boxes[:, None, 3]), 0)
    return np.hypot(dx, dy)


def _segment_distances(a: np.ndarray, ends: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """(segments, points): each display point's distance to each segment from a to one of `ends`."""
    ab = ends - a
    t = np.clip(((pts - a) @ ab.T).T / np.maximum((ab * ab).sum(axis=1), 1e-9)[:, None], 0, 1)
    return np.hypot(*np.moveaxis(pts[None] - a - t[..., None] * ab[:, None], -1, 0))


def _hits(starts: np.ndarray, ends: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(segments, boxes): whether each segment from starts[i] to ends[i] runs through each box (the slab test)."""
    d = (ends - starts)[:, None]
    d = np.where(np.abs(d) < 1e-9, 1e-9, d)  # a segment along an axis: its slab test still holds
    t0, t1 = (boxes[None, :, :2] - starts[:, None]) / d, (boxes[None, :, 2:] - starts[:, None]) / d
    enter = np.maximum(np.minimum(t0, t1).max(axis=2), 0)
    return enter <= np.minimum(np.maximum(t0, t1).min(axis=2), 1)


def _crossings(a: np.ndarray, ends: np.ndarray, leaders: np.ndarray) -> np.ndarray:
    """How many of the (n, 2, 2) leader segments each segment from a to one of `ends` crosses."""
    def side(p, q, r):  # the sign of r's side of the line p-q, for arrays broadcast together
        (px, py), (qx, qy), (rx, ry) = np.moveaxis(p, -1, 0), np.moveaxis(q, -1, 0), np.moveaxis(r, -1, 0)
        return np.sign((qx - px) * (ry - py) - (qy - py) * (rx - px))
    c, d, e = leaders[None, :, 0], leaders[None, :, 1], ends[:, None]
    return ((side(a, e, c) * side(a, e, d) < 0) & (side(c, d, a) * side(c, d, e) < 0)).sum(axis=1)


class _Labels:
    """One panel's labels: each one's spots and what each costs it alone (the panel's frame, markers and lines), and
    what it costs given the spots the other labels have taken (their boxes and leader lines)."""

    def __init__(self, ax, renderer):
        frame = ax.get_window_extent(renderer).padded(-3.0)  # text grows a little faster than dpi: a margin
        self.frame = np.array([frame.x0, frame.y0, frame.x1, frame.y1])
        self.px_per_pt = ax.figure.dpi / 72
        self.marker_px = 5.0 * self.px_per_pt  # about a large marker's radius
        self.markers, self.lines = _obstacles(ax)
        self.anchors, self.boxes, self.alone, self.spots = [], [], [], []

    def add(self, anchor: np.ndarray, size: np.ndarray, own: np.ndarray) -> None:
        """A label of `size` at `anchor` (display units) for the points at `own`: its spots' boxes and what each costs
        alone."""
        lo, f = anchor + _SPOT_OFFSETS * self.px_per_pt - _SPOT_ALIGN * size, self.frame
        # a label on a leader line may shift along the panel's edge to stay inside it: the line still finds it
        lo[_LEADER] = np.clip(lo[_LEADER], f[:2], np.maximum(f[2:] - size, f[:2]))
        boxes = np.hstack([lo, lo + size])
        cost = FORBIDDEN * ((boxes[:, 0] < f[0]) | (boxes[:, 1] < f[1]) | (boxes[:, 2] > f[2]) | (boxes[:, 3] > f[3]))
        rows = self.markers[_box_distances(np.hstack([own, own]), self.markers).min(axis=0) > 1.0]  # not its own
        to_rows, to_own = _box_distances(boxes, rows), _box_distances(boxes, anchor[None])
        misread = np.where(_LEADER, self.marker_px, np.maximum(1.5 * to_own[:, 0], 5.0))  # beside it: a clear margin
        cost += MISREAD * (to_rows < misread[:, None]).sum(axis=1)
        cost += _LEADER * AMBIGUOUS * (to_rows < np.minimum(to_own, 3 * self.marker_px)).sum(axis=1)
        cost += ON_LINE * (_box_distances(boxes, self.lines) < 2.0).sum(axis=1)
        rows = rows[np.hypot(*(rows - anchor).T) > self.marker_px]  # a marker under its own is passed anyway
        cost += _LEADER * OVER * (_segment_distances(anchor, _centres(boxes), rows) < self.marker_px).sum(axis=1)
        self.anchors.append(anchor)
        self.boxes.append(boxes)
        self.alone.append(cost + PER_PT * _SPOT_RADII)
        self.spots.append(None)

    def costs(self, i: int, spots: np.ndarray | None = None) -> np.ndarray:
        """What each of `spots` (all where None) costs label i given the spots the others have taken; a spot
        outside the panel costs what it costs alone."""
        spots = np.arange(len(self.alone[i])) if spots is None else spots
        others = [j for j, k in enumerate(self.spots) if j != i and k is not None]
        cost = self.alone[i][spots]
        inside = np.flatnonzero(cost < FORBIDDEN)
        if not others or not len(inside):
            return cost
        anchor, boxes = self.anchors[i], self.boxes[i][spots[inside]]
        taken = np.array([self.boxes[j][self.spots[j]] for j in others]) + np.array([-2.5, -2.5, 2.5, 2.5])
        extra = FORBIDDEN * ((boxes[:, None, 0] < taken[None, :, 2]) & (taken[None, :, 0] < boxes[:, None, 2])
                             & (boxes[:, None, 1] < taken[None, :, 3]) & (taken[None, :, 1] < boxes[:, None, 3])
                             ).sum(axis=1)
        ends, leader = _centres(boxes), _LEADER[spots[inside]]
        extra += leader * THROUGH * _hits(np.broadcast_to(anchor, ends.shape), ends, taken).sum(axis=1)
        led = [j for j in others if _LEADER[self.spots[j]]]
        if led:
            starts = np.array([self.anchors[j] for j in led])
            stops = _centres(np.array([self.boxes[j][self.spots[j]] for j in led]))
            extra += ON_LEADER * _hits(starts, stops, boxes).sum(axis=0)
            extra += leader * CROSSING * _crossings(anchor, ends, np.stack([starts, stops], axis=1))
        cost[inside] += extra
        return cost

    def arrange(self, order: list[int]) -> float:
        """Give each label in `order` its cheapest spot, then move each again while the others leave it a cheaper
        one; returns what they all cost."""
        self.spots = [None] * len(self.spots)
        for i in order:
            self.spots[i] = int(np.argmin(self.costs(i)))
        for _ in range(REFINE_PASSES):
            moved = False
            for i in order:
                cost = self.costs(i)
                k = int(np.argmin(cost))
                if cost[k] < cost[self.spots[i]] - 1e-9:
                    self.spots[i], moved = k, True
            if not moved:
                break
        return float(sum(self.costs(i, np.array([k]))[0] for i, k in enumerate(self.spots)))

    def unhindered(self) -> float:
        """What the labels would cost if none were in another's way: no arrangement costs less."""
        return float(sum(cost.min() for cost in self.alone))


def _centres(boxes: np.ndarray) -> np.ndarray:
    """Each (x0, y0, x1, y1) box's centre."""
    return (boxes[:, :2] + boxes[:, 2:]) / 2


def _coincident(anchors: np.ndarray, within: float) -> list[list[int]]:
    """The points (display units) in groups whose markers overlap, linked by any pair nearer than `within`: each
    group in the points' order, the groups in the order of their first points."""
    root = list(range(len(anchors)))

    def find(i: int) -> int:
        while root[i] != i:
            i = root[i]
        return i

    for i in range(len(anchors)):
        for j in range(i):
            if np.hypot(*(anchors[i] - anchors[j])) < within:
                root[find(i)] = find(j)
    groups: dict[int, list[int]] = {}
    for i in range(len(anchors)):
        groups.setdefault(find(i), []).append(i)
    return sorted(groups.values())


def _place_labels(ax, points: list, renderer) -> None:
    """Label each (x, y, text, bold) point inside its panel and off every other label; off other markers, lines and
    leader lines too where it can, near its point (with a leader line when away from it). Points whose markers
    coincide share one label, a line each, top point first. The labels are placed in four orders (top down, bottom
    up, left to right, right to left), each moved again while the others leave it a cheaper spot, and the cheapest
    arrangement kept. A label overlaps another only where no spot in reach is free of labels."""
    points = sorted(points, key=lambda p: (-p[1], p[0], p[2]))
    anchors = ax.transData.transform(np.array([p[:2] for p in points], dtype=float).reshape(-1, 2))
    labels, texts = _Labels(ax, renderer), []
    for group in _coincident(anchors, COINCIDE_PT * labels.px_per_pt):
        bold = any(points[i][3] for i in group)
        style = {"fontsize": LABEL_PT, "fontweight": "bold" if bold else "normal",
                 "color": "k" if bold else "0.3", "zorder": 6}
        anchor = anchors[group].mean(axis=0)
        xy = points[group[0]][:2] if len(group) == 1 else tuple(ax.transData.inverted().transform(anchor))
        probe = ax.text(*xy, "\n".join(points[i][2] for i in group), **style)
        labels.add(anchor, np.array(probe.get_window_extent(renderer).size), anchors[group])
        texts.append((xy, probe.get_text(), style))
        probe.remove()
    xs = np.array([xy[0] for xy, _, _ in texts])
    down, across = list(range(len(texts))), [int(i) for i in np.argsort(xs, kind="stable")]
    best = None
    for order in (down, down[::-1], across, across[::-1]):
        cost = labels.arrange(order)
        if best is None or cost < best[0] - 1e-9:
            best = (cost, labels.spots)
        if best[0] <= labels.unhindered() + 1e-9:  # no label in another's way: no other order can do better
            break
    for i, ((xy, text, style), k) in enumerate(zip(texts, best[1])):
        spot, box = LABEL_SPOTS[k % len(LABEL_SPOTS)], labels.boxes[i][k]
        offset = (box[:2] + _SPOT_ALIGN[k] * (box[2:] - box[:2]) - labels.anchors[i]) / labels.px_per_pt
        ax.annotate(text, xy, xytext=tuple(offset), textcoords="offset points", ha=spot[2], va=spot[3],
                    arrowprops={"arrowstyle": "-", "lw": 0.7, "color": "0.35", "shrinkA": 1, "shrinkB": 5}
                    if _LEADER[k] else None, **style)


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
        _place_labels(ax, points, renderer)
    _header(fig, ceiling, marked, norm if head > HEAD_IN else None)
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
