"""Label placement for the trilemma figure's panels: each label near its point, inside its panel, off every other
label, and off other markers, lines and leader lines where it can.

Each label has spots around its point at growing radii (with a leader line beyond the first); what a spot costs
alone (the panel's frame, markers, lines) is computed once, what it costs given the other labels' spots as they
move. `place_labels` tries four orders and keeps the cheapest arrangement.
"""

from __future__ import annotations

import numpy as np

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
LABEL_PT = 8.5  # about 13 px at the saved dpi (110)
_ALIGN = {"left": 0.0, "center": 0.5, "right": 1.0, "bottom": 0.0, "top": 1.0}
_SPOT_RADII = np.repeat(np.array(LABEL_RADII, dtype=float), len(LABEL_SPOTS))  # every spot at every radius
_SPOT_OFFSETS = np.tile(np.array([s[:2] for s in LABEL_SPOTS]), (len(LABEL_RADII), 1)) * _SPOT_RADII[:, None]
_SPOT_ALIGN = np.tile(np.array([(_ALIGN[s[2]], _ALIGN[s[3]]) for s in LABEL_SPOTS]), (len(LABEL_RADII), 1))
_LEADER = _SPOT_RADII > LABEL_RADII[0]


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


def place_labels(ax, points: list, renderer) -> None:
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
