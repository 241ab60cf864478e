"""Metrics on point sets whose answers are known in closed form."""

import numpy as np
import pytest

from components.data import gaussians25_means
from components.features import identity_features
from components.metrics import (
    frechet_distance, mode_metrics, nearest_mode, precision_recall, reference_set, sample_metrics, target_hit_rate,
)

MEANS = gaussians25_means()


def test_samples_on_every_mode_are_perfect():
    x = np.repeat(MEANS, 40, axis=0)
    m = mode_metrics(x, MEANS, 0.05)
    assert m == {"hq_fraction": 1.0, "modes": 25, "kl_uniform": pytest.approx(0.0, abs=1e-12)}


def test_five_modes_give_kl_log5():
    x = np.repeat(MEANS[:5], 100, axis=0)
    m = mode_metrics(x, MEANS, 0.05)
    assert m["modes"] == 5
    assert m["kl_uniform"] == pytest.approx(np.log(5))


def test_quality_radius_is_three_std():
    inside = MEANS[:1] + [[0.149, 0.0]]
    outside = MEANS[:1] + [[0.151, 0.0]]
    assert mode_metrics(inside, MEANS, 0.05)["hq_fraction"] == 1.0
    assert mode_metrics(outside, MEANS, 0.05)["hq_fraction"] == 0.0


def test_min_count_decides_coverage():
    x = np.concatenate([np.repeat(MEANS[:1], 19, axis=0), np.repeat(MEANS[1:2], 20, axis=0)])
    assert mode_metrics(x, MEANS, 0.05, min_count=20)["modes"] == 1


def test_frechet_distance_closed_form():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5000, 2))
    shift = np.array([3.0, -4.0])
    f = identity_features(x)
    assert frechet_distance(f, f) == pytest.approx(0.0, abs=1e-6)
    # same covariance, shifted mean: FID = ||shift||^2
    assert frechet_distance(identity_features(x + shift), f) == pytest.approx(25.0, rel=1e-6)


def test_precision_recall_extremes():
    rng = np.random.default_rng(0)
    real = identity_features(rng.standard_normal((2000, 2)))
    assert precision_recall(real, real) == (1.0, 1.0)
    far = identity_features(rng.standard_normal((2000, 2)) + 100)
    assert precision_recall(far, real) == (0.0, 0.0)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_precision_recall_is_torch_fidelitys(k):
    """The cached-radii arrangement returns exactly torch-fidelity's numbers, rounded data (distance ties) included."""
    from torch_fidelity.metric_prc import prc_features_to_metric

    rng = np.random.default_rng(k)
    real = identity_features(np.round(rng.standard_normal((3000, 2)), 1))  # coarse grid: many equal distances
    fake = identity_features(np.round(0.7 * rng.standard_normal((2500, 2)) + 0.8, 1))
    ours = precision_recall(fake, real, k, reference_set(real.numpy(), "identity", k).radii)
    theirs = prc_features_to_metric(fake.float(), real.float(), prc_neighborhood=k, prc_batch_size=10000,
                                    save_cpu_ram=False, verbose=False)
    assert ours == (theirs["precision"], theirs["recall"])
    assert 0.5 < ours[0] < 1 and 0.5 < ours[1] < 1  # neither a trivial extreme


def test_target_hit_rate_counts_nearest_mode_equal_to_target():
    x = MEANS[[0, 1, 2, 3]] + np.array([[0.1, 0.0], [0.9, 0.0], [0.0, 1.1], [0.0, 0.0]])
    nearest, dist = nearest_mode(x, MEANS)
    assert dist == pytest.approx([0.1, 0.9, 0.9, 0.0])
    # sample 2 sits 1.1 from mode 2 and 0.9 from mode 3 (2 apart on the grid): a miss
    assert nearest[2] == 3
    assert target_hit_rate(x, np.array([0, 1, 2, 3]), MEANS) == 0.75


def test_collapsed_samples_keep_precision_and_lose_recall():
    rng = np.random.default_rng(1)
    real = np.repeat(MEANS, 200, axis=0) + 0.05 * rng.standard_normal((5000, 2))
    collapsed = np.repeat(MEANS[:5], 1000, axis=0) + 0.05 * rng.standard_normal((5000, 2))
    m = sample_metrics(collapsed, reference_set(real), modes=MEANS, mode_std=0.05)
    assert m["precision"] > 0.9 and m["recall"] < 0.3
    assert m["modes"] == 5 and m["hq_fraction"] > 0.95
