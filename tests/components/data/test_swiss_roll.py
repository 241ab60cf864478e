"""The swiss roll of Sohl-Dickstein et al. 2015 on hand-made points whose answers are known in closed form."""

import numpy as np
import pytest

from components.data.datasets import DataSpec, split_problem
from components.data.swiss_roll import (
    THETA_MAX, THETA_MIN, TURN_GAP, arc_length, curve, nearest_on_curve, swissroll_log_prob, swissroll_metrics,
    swissroll_splits,
)

A, B = THETA_MIN, THETA_MAX  # 1.5 pi, 4.5 pi: cos = 0 and sin = -1, +1 at the two ends
# Raw moments of (theta cos theta, theta sin theta), theta ~ U[A, B], integrated by parts by hand:
# E[theta cos theta] = [theta sin + cos]_A^B / (3 pi) = (4.5 pi + 1.5 pi) / (3 pi) = 2,
# E[theta sin theta] = [sin - theta cos]_A^B / (3 pi) = 2 / (3 pi),
# E[theta^2 cos^2 / sin^2] = ((B^3 - A^3) / 3 -/+ 1.5 pi) / (6 pi)  (the cos 2 theta term: [theta cos 2 theta / 2]_A^B).
MEAN = np.array([2.0, 2.0 / (3 * np.pi)])
SECOND = np.array([(B**3 - A**3) / 3 - 1.5 * np.pi, (B**3 - A**3) / 3 + 1.5 * np.pi]) / (6 * np.pi)
STD = np.sqrt(SECOND - MEAN**2)


def velocity(theta):
    """dc/dtheta of the data-unit curve, by hand: d(theta cos, theta sin) = (cos - theta sin, sin + theta cos)."""
    return np.stack([np.cos(theta) - theta * np.sin(theta), np.sin(theta) + theta * np.cos(theta)], -1) / STD


def normal(theta):
    v = velocity(theta)
    return np.stack([-v[..., 1], v[..., 0]], -1) / np.linalg.norm(v, axis=-1, keepdims=True)


def theta_at_length(s):
    """Inverse of arc_length on a dense table (arc_length is increasing)."""
    table = np.linspace(A, B, 200_001)
    return np.interp(s, arc_length(table), table)


def test_curve_ends_are_the_hand_normalised_points():
    # raw ends: (A cos A, A sin A) = (0, -1.5 pi), (B cos B, B sin B) = (0, 4.5 pi)
    expected = (np.array([[0.0, -1.5 * np.pi], [0.0, 4.5 * np.pi]]) - MEAN) / STD
    got = curve(np.array([A, B]))
    assert got.shape == (2, 2) and got.dtype == np.float64
    # the module's moments (mean of 200_001 equally spaced values) carry an O(1/n) bias of ~2e-5 raw units,
    # which moves the end points by ~1e-5 data units
    assert got == pytest.approx(expected, abs=5e-5)


def test_splits_shapes_dtypes_and_determinism():
    a, b = swissroll_splits(300, 200, 0.05, seed=3), swissroll_splits(300, 200, 0.05, seed=3)
    assert a["train"].x.shape == (300, 2) and a["reference"].x.shape == (200, 2)
    for name in ("train", "reference"):
        ds = a[name]
        assert ds.x.dtype == np.float32 and ds.y.dtype == np.int64 and not ds.y.any()
        assert ds.shift == 0.0 and ds.scale == pytest.approx(1 / np.sqrt(1 + 0.05**2))
        assert ds.modes is None and ds.mode_std is None and ds.n_classes == 1
        np.testing.assert_array_equal(ds.x, b[name].x)
    assert not np.allclose(a["train"].x[:200], a["reference"].x)
    assert not np.allclose(a["train"].x, swissroll_splits(300, 200, 0.05, seed=4)["train"].x)
    spec = DataSpec(swissroll_splits, shape=(2,), dtype=np.float32, n_classes=1, decoder="continuous", mixture=False)
    assert split_problem(a["train"], spec) is None


def test_splits_have_zero_mean_and_variance_one_plus_std2():
    n, std = 200_000, 0.05
    x = swissroll_splits(n, 10, std, seed=0)["train"].x.astype(np.float64)
    # x = C + std Z with C the z-scored curve coordinate (E C = 0, E C^2 = 1), so Var x = 1 + std^2 and
    # E x^4 = E C^4 + 6 std^2 + 3 std^4. Standard errors: sqrt(Var / n) for the mean (~2.2e-3),
    # sqrt((E x^4 - Var^2) / n) for the variance; tolerance 5 standard errors.
    var = 1 + std**2
    fourth = (curve(np.linspace(A, B, 200_001)) ** 4).mean(0) + 6 * std**2 + 3 * std**4
    se_var = np.sqrt((fourth - var**2) / n)
    assert np.abs(x.mean(0)).max() < 5 * np.sqrt(var / n)
    assert np.all(np.abs(x.var(0) - var) < 5 * se_var)


def test_nearest_on_curve_finds_points_on_the_curve():
    theta = np.linspace(A, B, 101)
    dist, found = nearest_on_curve(curve(theta))
    assert dist.shape == found.shape == (101,)
    assert dist.max() < 1e-3
    assert found == pytest.approx(theta, abs=1e-6)


@pytest.mark.parametrize("d", [0.1, -0.1])
def test_nearest_on_curve_measures_offsets_along_the_normal(d):
    theta = np.linspace(A + 0.2, B - 0.2, 57)
    dist, found = nearest_on_curve(curve(theta) + d * normal(theta))
    assert dist == pytest.approx(np.full(57, abs(d)), abs=1e-6)
    assert found == pytest.approx(theta, abs=1e-5)


def test_turns_are_at_least_the_documented_gap_apart():
    theta = np.linspace(A, B, 3001)
    c = curve(theta)
    d2 = np.subtract.outer(c[:, 0], c[:, 0]) ** 2 + np.subtract.outer(c[:, 1], c[:, 1]) ** 2
    other_turn = np.abs(np.subtract.outer(theta, theta)) > np.pi
    gap = np.sqrt(d2[other_turn].min())
    assert gap == pytest.approx(TURN_GAP, abs=2e-4)  # the grid overshoots the minimum by < 1e-4
    assert gap > 2 * 3 * 0.05  # two 3-std tubes of std 0.05 cannot touch


def test_arc_length_is_the_polyline_length():
    theta = np.linspace(A, B, 100_001)
    polyline = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(curve(theta), axis=0), axis=1))])
    assert arc_length(theta) == pytest.approx(polyline, abs=1e-6)
    assert arc_length(np.array([A]))[0] == 0.0


STD_Q = 0.05


def test_points_on_the_curve_are_high_quality_and_cover_it():
    x = curve(theta_at_length(np.linspace(0, arc_length(B), 1000)))
    assert swissroll_metrics(x, STD_Q, 3.0, 20) == {"hq_fraction": 1.0, "arc_coverage": 1.0}


def test_points_four_std_off_the_curve_are_low_quality():
    theta = np.linspace(A + 0.2, B - 0.2, 1000)
    side = np.where(np.arange(1000) % 2 == 0, 1.0, -1.0)[:, None]
    x = curve(theta) + side * 4 * STD_Q * normal(theta)
    assert swissroll_metrics(x, STD_Q, 3.0, 1) == {"hq_fraction": 0.0, "arc_coverage": 0.0}


def test_first_half_of_the_arc_gives_half_coverage():
    per_bin, bins = 20, 50
    n = per_bin * bins // 2
    s = (np.arange(n) + 0.5) * arc_length(B) / 2 / n  # equally spaced in arc length over the first half
    m = swissroll_metrics(curve(theta_at_length(s)), STD_Q, 3.0, min_count=per_bin // 2, bins=bins)
    assert m["hq_fraction"] == 1.0
    assert m["arc_coverage"] == pytest.approx(0.5, abs=1 / bins)


def test_data_samples_are_high_quality_and_cover_the_roll():
    x = swissroll_splits(10_000, 10, STD_Q, seed=1)["train"].x
    m = swissroll_metrics(x, STD_Q, 3.0, 20)
    assert m["hq_fraction"] > 0.99 and m["arc_coverage"] == 1.0  # 3 std keeps 99.7% across the roll


def test_log_prob_integrates_to_one():
    std, h = 0.1, 0.02  # Riemann sum with spacing std / 5: exact up to ~exp(-2 pi^2 25) for Gaussians
    c = curve(np.linspace(A, B, 10_001))
    lo, hi = c.min(0) - 6 * std, c.max(0) + 6 * std
    gx, gy = (np.arange(lo[i], hi[i] + h, h) for i in range(2))
    grid = np.stack(np.meshgrid(gx, gy, indexing="ij"), -1).reshape(-1, 2)
    # 2_000 theta cells move the curve by <= 2.14 * 3 pi / 2_000 = 0.01 = std / 10 each
    total = np.exp(swissroll_log_prob(grid, std, grid=2_000)).sum() * h**2
    assert total == pytest.approx(1.0, abs=1e-3)


def test_log_prob_on_the_curve_is_the_density_along_times_across():
    # For std << the curve's radius of curvature (>= 0.73) and the turn gap, p(c(theta)) ~ p_theta(theta) / |c'|
    # (density along the arc) times N(0; 0, std^2) (density across it).
    std = 0.01
    theta = np.linspace(A + 0.5, B - 0.5, 9)
    expected = np.log(1 / (B - A) / np.linalg.norm(velocity(theta), axis=-1)) - 0.5 * np.log(2 * np.pi * std**2)
    got = swissroll_log_prob(curve(theta), std)
    assert got.shape == (9,)
    assert got == pytest.approx(expected, abs=0.05)
