"""The 2-D swiss roll of Sohl-Dickstein et al. 2015 (Deep Unsupervised Learning using Nonequilibrium
Thermodynamics, Fig. 1 and Table 1) as a data set, with its exact density and its quality / coverage measures.

The raw curve is the common swiss-roll parametrisation (scikit-learn's make_swiss_roll projected to 2-D):
c(theta) = (theta cos theta, theta sin theta), theta ~ U[1.5 pi, 4.5 pi], so the density along the arc is
not uniform (it falls as 1 / |dc/dtheta| towards the outer turn). The paper z-scores its data; here the data
unit is the raw curve z-scored per coordinate with the curve's exact population moments under theta ~ U.
In data units the roll spans about [-1.73, 1.60] x [-1.62, 2.00], its arc is about 13.18 long, the curve
moves 0.73 to 2.14 data units per radian of theta, and neighbouring turns are at least 0.8957 apart
(checked by brute force, tests/components/data/test_swiss_roll.py).
"""

from __future__ import annotations

import functools

import numpy as np

from components.data.dataset import Dataset

THETA_MIN = 1.5 * np.pi
THETA_MAX = 4.5 * np.pi
QUADRATURE_POINTS = 200_001  # dense equally spaced theta grid of the moments and the arc-length table
TURN_GAP = 0.8957  # minimal distance between two turns of the data-unit curve (points > pi apart in theta)
_BLOCK = 256  # curve points per block of the pruned brute-force searches
_ROWS = 8192  # points x per chunk: each block's squared distances are then <= 8192 x 256 floats (17 MB)
_CUT = 40.0  # log_prob drops curve points whose log-weight is < max - _CUT: e^-40 = 4e-18 of the largest each


@functools.cache
def _raw_moments() -> tuple[np.ndarray, np.ndarray]:
    """Per-coordinate population mean and std (2,) of the raw curve under theta ~ U[THETA_MIN, THETA_MAX].

    Dense quadrature: the mean of the values at QUADRATURE_POINTS equally spaced theta. Mean
    (1.99999, 0.21223), std (6.62300, 6.95123); the closed forms (2, 2 / (3 pi)) and
    sqrt((b^3 - a^3) / (18 pi) -/+ 1/4 - mean^2) agree to 2.3e-5 raw units (curve points move < 1e-5 data units).
    """
    theta = np.linspace(THETA_MIN, THETA_MAX, QUADRATURE_POINTS)
    raw = np.stack([theta * np.cos(theta), theta * np.sin(theta)], axis=-1)
    mean, std = raw.mean(0), raw.std(0)
    mean.flags.writeable = std.flags.writeable = False
    return mean, std


def curve(theta: np.ndarray) -> np.ndarray:
    """The data-unit (z-scored) swiss roll at theta (N,): ((theta cos theta, theta sin theta) - mean) / std, (N, 2).

    Sohl-Dickstein et al. 2015's swiss roll, normalised per coordinate by the raw curve's moments under theta ~ U.
    """
    theta = np.asarray(theta, dtype=np.float64)
    mean, std = _raw_moments()
    return (np.stack([theta * np.cos(theta), theta * np.sin(theta)], axis=-1) - mean) / std


def _derivatives(theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """dc/dtheta and d2c/dtheta2 of the data-unit curve, each (N, 2)."""
    theta = np.asarray(theta, dtype=np.float64)
    cos, sin = np.cos(theta), np.sin(theta)
    std = _raw_moments()[1]
    d1 = np.stack([cos - theta * sin, sin + theta * cos], axis=-1) / std
    d2 = np.stack([-2 * sin - theta * cos, 2 * cos - theta * sin], axis=-1) / std
    return d1, d2


@functools.cache
def _arc_table() -> tuple[np.ndarray, np.ndarray]:
    """(theta, arc length from THETA_MIN) at QUADRATURE_POINTS equally spaced theta: cumulative trapezoid of |c'|."""
    theta = np.linspace(THETA_MIN, THETA_MAX, QUADRATURE_POINTS)
    speed = np.linalg.norm(_derivatives(theta)[0], axis=-1)
    length = np.concatenate([[0.0], np.cumsum(0.5 * (speed[1:] + speed[:-1]) * np.diff(theta))])
    theta.flags.writeable = length.flags.writeable = False
    return theta, length


def arc_length(theta: np.ndarray) -> np.ndarray:
    """Arc length (data units) of the z-scored swiss roll (Sohl-Dickstein et al. 2015) from THETA_MIN to theta.

    Cumulative trapezoid of |dc/dtheta| on QUADRATURE_POINTS equally spaced theta (step 4.7e-5; relative
    error ~1e-10), linearly interpolated; theta is clipped to [THETA_MIN, THETA_MAX]. The whole arc is 13.1776.
    """
    table_theta, table_length = _arc_table()
    return np.interp(np.asarray(theta, dtype=np.float64), table_theta, table_length)


def _theta_at_length(length: np.ndarray) -> np.ndarray:
    """Inverse of arc_length: theta whose arc length from THETA_MIN is `length`."""
    table_theta, table_length = _arc_table()
    return np.interp(length, table_length, table_theta)


def swissroll(n: int, std: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n draws curve(theta) + std * N(0, I_2), theta ~ U[THETA_MIN, THETA_MAX]: (x (n, 2) float32, zeros (n,) int64).

    Sohl-Dickstein et al. 2015's swiss roll in data units (the z-scored curve), with isotropic noise of std `std`.
    """
    theta = rng.uniform(THETA_MIN, THETA_MAX, size=n)
    x = curve(theta) + std * rng.standard_normal((n, 2))
    return x.astype(np.float32), np.zeros(n, dtype=np.int64)


def swissroll_splits(n_train: int, n_reference: int, std: float, seed: int) -> dict[str, Dataset]:
    """Train and held-out reference splits of the swiss roll (Sohl-Dickstein et al. 2015) from one seed's streams.

    Seeded as `gaussians25_splits` (components/data/gaussians25.py): train and reference draw from the two children of
    np.random.SeedSequence(seed). One class (y = 0). Model space has unit variance per coordinate: the
    z-scored curve has variance 1 per coordinate and the isotropic noise adds std^2, so shift = 0 and
    scale = 1 / sqrt(1 + std^2). No modes: the roll is scored by swissroll_metrics, not mode_metrics.
    """
    scale = float(1.0 / np.sqrt(1.0 + std**2))
    train_rng, ref_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    splits = {}
    for name, n, rng in (("train", n_train, train_rng), ("reference", n_reference, ref_rng)):
        x, y = swissroll(n, std, rng)
        splits[name] = Dataset(x=x, y=y, shift=0.0, scale=scale, modes=None, mode_std=None)
    return splits


def _sq_dist(x: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Squared distances (N, M) between x (N, 2) and points (M, 2), one coordinate at a time (no (N, M, 2) array)."""
    d2 = np.subtract.outer(x[:, 0], points[:, 0])
    d2 *= d2
    dy = np.subtract.outer(x[:, 1], points[:, 1])
    dy *= dy
    d2 += dy
    return d2


def _pruned_blocks(x: np.ndarray, points: np.ndarray) -> tuple[list[slice], np.ndarray]:
    """Cut `points` (M, 2) into blocks of _BLOCK consecutive points; return their slices and, per x (N, 2) and
    block, a lower bound on the distance from x to any point of the block, |x - centre| - radius (N, n_blocks)."""
    blocks = [slice(i, min(i + _BLOCK, len(points))) for i in range(0, len(points), _BLOCK)]
    centres = np.stack([points[b].mean(0) for b in blocks])
    radii = np.array([np.linalg.norm(points[b] - c, axis=-1).max() for b, c in zip(blocks, centres)])
    to_centre = np.linalg.norm(x[:, None, :] - centres[None], axis=-1)
    return blocks, np.maximum(to_centre - radii, 0.0)


def _grid_nearest(x: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact brute-force nearest of `points` (M, 2) to each x (N, 2): (squared distance (N,), index (N,)).

    Blocks whose distance lower bound exceeds an upper bound on the nearest distance (the smallest distance to
    a block's first point) cannot hold the nearest point and are skipped.
    """
    blocks, lower = _pruned_blocks(x, points)
    upper = np.array([np.linalg.norm(x - points[b.start], axis=-1) for b in blocks]).min(0)
    best, arg = np.full(len(x), np.inf), np.zeros(len(x), dtype=np.int64)
    for j, b in enumerate(blocks):
        rows = np.flatnonzero(lower[:, j] <= upper)
        if rows.size:
            d2 = _sq_dist(x[rows], points[b])  # (rows, _BLOCK)
            k = d2.argmin(1)
            d2k = d2[np.arange(len(rows)), k]
            better = d2k < best[rows]
            best[rows[better]], arg[rows[better]] = d2k[better], k[better] + b.start
    return best, arg


def nearest_on_curve(x: np.ndarray, grid: int = 20_000) -> tuple[np.ndarray, np.ndarray]:
    """Distance (N,) from each x (N, 2) (data units) to the z-scored swiss roll (Sohl-Dickstein et al. 2015), and
    the theta (N,) of its nearest curve point.

    Brute force against `grid` curve points equally spaced in arc length (spacing 13.1776 / (grid - 1) = 6.6e-4
    at the default, so the grid distance overshoots the true one by at most 3.3e-4), then three Newton steps on
    |x - c(theta)|^2, kept within the two grid cells around the nearest grid point and within the curve's ends;
    a step is kept only if it brings the point closer. The refined distance is the local minimum to ~1e-12; only
    for a point almost equidistant from two turns may the branch differ, and then the distance by < 3.3e-4.
    Exact brute force over the grid, but blocks of 256 curve points that cannot hold the nearest one are
    skipped, and x goes in chunks of 8192 (peak memory ~35 MB; ~0.08 s for N = 10_000 on 2 CPU cores).
    """
    x = np.asarray(x, dtype=np.float64).reshape(-1, 2)
    if len(x) > _ROWS:
        parts = [nearest_on_curve(x[i:i + _ROWS], grid) for i in range(0, len(x), _ROWS)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    total = arc_length(THETA_MAX)
    grid_theta = _theta_at_length(np.linspace(0.0, total, grid))
    d2, k = _grid_nearest(x, curve(grid_theta))
    lo = grid_theta[np.maximum(k - 1, 0)]
    hi = grid_theta[np.minimum(k + 1, grid - 1)]
    theta = grid_theta[k]
    for _ in range(3):
        diff = x - curve(theta)
        d1, dd = _derivatives(theta)
        slope = -(diff * d1).sum(-1)  # d/dtheta of |x - c|^2 / 2
        bend = (d1**2).sum(-1) - (diff * dd).sum(-1)
        step = np.where(bend > 0, -slope / np.where(bend > 0, bend, 1.0), 0.0)
        trial = np.clip(theta + step, lo, hi)
        trial_d2 = ((x - curve(trial)) ** 2).sum(-1)
        better = trial_d2 < d2
        theta, d2 = np.where(better, trial, theta), np.where(better, trial_d2, d2)
    return np.sqrt(d2), theta


def swissroll_metrics(x: np.ndarray, std: float, n_std: float, min_count: int, bins: int = 50) -> dict[str, float]:
    """Sample quality and arc coverage of samples x (N, 2) (data units) of the swiss roll (Sohl-Dickstein et al. 2015).

    - hq_fraction: share of samples within n_std * std of the curve. The data's noise is isotropic
      N(0, std^2 I), so away from the roll's turns a data point's offset across the curve is ~ |N(0, std^2)|
      and n_std = 3 keeps 99.7% of the data: the same rule as the 25 Gaussians' "within 3 std of a mode"
      (VEEGAN / PacGAN, components.scoring.metrics.mode_metrics). Neighbouring turns are >= TURN_GAP = 0.8957 data
      units apart, so a tolerance of 3 * 0.05 = 0.15 cannot bridge two turns and each high-quality sample has
      an unambiguous place on the roll.
    - arc_coverage: the curve is cut into `bins` pieces of equal arc length; a piece is covered when it holds
      >= min_count high-quality samples (placed by the theta of their nearest curve point); the value is the
      covered share of pieces, i.e. of the roll's arc length, in [0, 1].
    """
    dist, theta = nearest_on_curve(x)
    hq = dist <= n_std * std
    piece = np.minimum((arc_length(theta) / arc_length(THETA_MAX) * bins).astype(np.int64), bins - 1)
    counts = np.bincount(piece[hq], minlength=bins)
    return {"hq_fraction": float(hq.mean()), "arc_coverage": float((counts >= min_count).sum() / bins)}


def swissroll_log_prob(x: np.ndarray, std: float, grid: int = 20_000) -> np.ndarray:
    """Exact log density (nats) of the swiss-roll data distribution (Sohl-Dickstein et al. 2015) at x (N, 2), (N,).

    p(x) = E_theta N(x; curve(theta), std^2 I), theta ~ U[THETA_MIN, THETA_MAX], by the midpoint rule:
    log p(x) = logsumexp_i log N(x; curve(theta_i), std^2 I) - log(grid), theta_i the midpoints of `grid`
    equal theta cells. At the default grid a cell moves the curve by at most 2.14 * 3 pi / grid = 1.0e-3 data
    units, a tenth of std = 0.01: across the roll's interior the rule's error on the Gaussian is
    ~exp(-2 pi^2 100) (none), and within a few std of the two ends, where the integrand is cut off, it is
    ~(1e-3 / std)^2 / 50 relative (measured: <= 1.2e-4 nats at std = 0.01, 5e-6 at std = 0.05, for points
    within 5 std of the curve). Only far beyond the roll's two ends is it coarse: at distance D past an end the
    integrand falls within std^2 / (D |dc/dtheta|) of it, under a cell once D > ~10 std at std = 0.01
    (0.03 nats at D = 10 std, growing with D), where log p is below -50 anyway.
    Curve points whose term is < e^-40 times the largest are skipped by blocks (a relative error < 1e-13), and x
    goes in chunks of 8192 (peak memory ~35 MB; ~0.15 s for N = 10_000 at std = 0.05 on 2 CPU cores).
    """
    x = np.asarray(x, dtype=np.float64).reshape(-1, 2)
    if len(x) > _ROWS:
        return np.concatenate([swissroll_log_prob(x[i:i + _ROWS], std, grid) for i in range(0, len(x), _ROWS)])
    theta = THETA_MIN + (np.arange(grid) + 0.5) * (THETA_MAX - THETA_MIN) / grid
    points = curve(theta)
    d2min = _grid_nearest(x, points)[0]  # the largest term, so each sum below is >= 1
    blocks, lower = _pruned_blocks(x, points)
    reach = d2min + 2.0 * _CUT * std**2  # squared distance beyond which a term is < e^-_CUT of the largest
    total = np.zeros(len(x))
    for j, b in enumerate(blocks):
        rows = np.flatnonzero(lower[:, j] ** 2 <= reach)
        if rows.size:
            a = _sq_dist(x[rows], points[b])  # (rows, _BLOCK)
            a -= d2min[rows, None]
            a *= -0.5 / std**2
            total[rows] += np.exp(a, out=a).sum(1)
    return -0.5 * d2min / std**2 + np.log(total) - np.log(2 * np.pi * std**2) - np.log(grid)
