"""Metrics on point sets whose answers are known in closed form."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT
from components.data.gaussians25 import gaussians25_means
from components.scoring.features import Extractor, identity_features
from components.scoring.metrics import (
    ReferenceSet, evaluator_labels, fid_statistics, frechet_distance, frechet_distance_from_statistics, knn_radii,
    label_accuracy, label_mode_metrics, mode_metrics, nearest_mode, precision_recall, reference_set, sample_metrics, target_hit_rate,
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


def test_on_images_the_target_hit_is_the_evaluators_judgement_not_the_nearest_mode():
    """A guided cell on images is judged by the extractor's classifier (the pipeline's evaluator): its argmax against
    the target, whatever the samples' nearest 'mode' would say."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 2))
    says = torch.zeros(40, 1, 10)
    says[:, 0, 3] = 5.0  # the evaluator calls every sample a 3
    judge = Extractor("judge", lambda s: (identity_features(s), says))
    ref = reference_set(rng.standard_normal((200, 2)))
    y = np.array([3] * 30 + [4] * 10)
    m = sample_metrics(x, ref, extractor=judge, modes=MEANS, mode_std=0.05, kid_subsets=2, kid_subset_size=20,
                       targets=y)
    assert m["target_hit"] == 0.75 == label_accuracy(says, y)
    assert "target_hit" not in sample_metrics(x, ref, extractor=judge, kid_subsets=2, kid_subset_size=20)
    assert sample_metrics(x, ref, modes=MEANS, mode_std=0.05, targets=y)["target_hit"] == target_hit_rate(x, y, MEANS)


def test_collapsed_samples_keep_precision_and_lose_recall():
    rng = np.random.default_rng(1)
    real = np.repeat(MEANS, 200, axis=0) + 0.05 * rng.standard_normal((5000, 2))
    collapsed = np.repeat(MEANS[:5], 1000, axis=0) + 0.05 * rng.standard_normal((5000, 2))
    m = sample_metrics(collapsed, reference_set(real), modes=MEANS, mode_std=0.05)
    assert m["precision"] > 0.9 and m["recall"] < 0.3
    assert m["modes"] == 5 and m["hq_fraction"] > 0.95


# --- torch-fidelity's numbers without torch-fidelity: FID and tiled precision/recall -------------------------------


@pytest.mark.parametrize("dim", [2, 16])
def test_fid_is_torch_fidelitys(dim):
    """numpy FID (Heusel et al. 2017) returns bit for bit what torch-fidelity's feature-level functions do."""
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric

    rng = np.random.default_rng(dim)
    a = torch.from_numpy(rng.standard_normal((3000, dim)))
    b = torch.from_numpy(0.8 * rng.standard_normal((2000, dim)) @ rng.standard_normal((dim, dim)) + 0.3)
    theirs = fid_statistics_to_metric(fid_features_to_statistics(a), fid_features_to_statistics(b), verbose=False)
    assert frechet_distance(a, b) == theirs[KEY_METRIC_FID]
    assert frechet_distance_from_statistics(*fid_statistics(a), *fid_statistics(b)) == theirs[KEY_METRIC_FID]
    mu, sigma = fid_statistics(a)
    assert np.array_equal(mu, fid_features_to_statistics(a)["mu"])
    assert np.array_equal(sigma, fid_features_to_statistics(a)["sigma"])


def _point_sets(n_fake, n_real, rounded, seed):
    """Real and generated 2-D point sets that overlap; rounded to a 0.1 grid, many distances tie."""
    rng = np.random.default_rng(seed)
    real, fake = rng.standard_normal((n_real, 2)), 0.7 * rng.standard_normal((n_fake, 2)) + 0.8
    if rounded:
        real, fake = np.round(real, 1), np.round(fake, 1)
    return identity_features(fake), identity_features(real)


def _torch_fidelity_prc(fake, real, k, batch):
    from torch_fidelity.metric_prc import prc_features_to_metric

    out = prc_features_to_metric(fake.float(), real.float(), prc_neighborhood=k, prc_batch_size=batch,
                                 save_cpu_ram=False, verbose=False)
    return out["precision"], out["recall"]


@pytest.mark.parametrize("rounded", [False, True])
@pytest.mark.parametrize("k", [1, 3, 5])
def test_tiled_precision_recall_is_torch_fidelitys(k, rounded):
    """Tiles that divide N and tiles that do not: k-NN radii and precision/recall equal torch-fidelity's (==)."""
    from torch_fidelity.metric_prc import calc_cdist_full

    fake, real = _point_sets(2500, 3000, rounded, seed=10 * k + rounded)
    theirs = _torch_fidelity_prc(fake, real, k, 10_000)
    their_radii = calc_cdist_full(real.float(), real.float(), 10_000).kthvalue(k + 1).values
    for block in (250, 500, 777, 1000, 4096):
        assert torch.equal(knn_radii(real, k, block=block), their_radii), block
        assert precision_recall(fake, real, k, block=block) == theirs, block
    assert 0.5 < theirs[0] < 1 and 0.5 < theirs[1] < 1  # neither a trivial extreme


@pytest.mark.parametrize("n_fake, n_real", [(1003, 1510), (1530, 1001), (1024, 1024)])
def test_tiles_follow_torch_fidelitys_blocks(n_fake, n_real):
    """With torch-fidelity's blocks smaller than N, and a last block of a few points, still its numbers (==).

    The radii are the sharper check: a distance rounded differently moves a radius by an ulp long
    before it flips a membership. 1003 = 2 x 500 + 3 needs the tiles to follow torch-fidelity's blocks.
    """
    from torch_fidelity.metric_prc import calc_cdist_full

    fake, real = _point_sets(n_fake, n_real, rounded=True, seed=n_fake)
    theirs = _torch_fidelity_prc(fake, real, 3, 500)
    their_radii = [calc_cdist_full(f.float(), f.float(), 500).kthvalue(4).values for f in (fake, real)]
    for block in (64, 333, 500, 2000):
        assert precision_recall(fake, real, 3, block=block, batch=500) == theirs, block
        assert all(torch.equal(knn_radii(f, 3, block=block, batch=500), r) for f, r in zip((fake, real), their_radii))


def test_tiles_bound_the_distance_matrices(monkeypatch):
    """No torch.cdist call returns more than block x block distances while N spans several tiles."""
    fake, real = _point_sets(2600, 3100, rounded=False, seed=7)
    theirs = _torch_fidelity_prc(fake, real, 3, 10_000)
    shapes = []
    cdist = torch.cdist

    def recording_cdist(x1, x2, *args, **kwargs):
        out = cdist(x1, x2, *args, **kwargs)
        shapes.append(tuple(out.shape))
        return out

    monkeypatch.setattr(torch, "cdist", recording_cdist)
    block = 300
    assert precision_recall(fake, real, 3, block=block) == theirs
    assert max(r for r, _ in shapes) <= block and max(c for _, c in shapes) <= block
    assert len(shapes) > (2600 // block) ** 2 + (3100 // block) ** 2  # the two k-NN searches alone
    with pytest.raises(ValueError):
        knn_radii(real, 3, block=32)  # parts of fewer than MIN_TILE points: refused


def test_reference_set_round_trips_through_npz(tmp_path):
    """to_arrays -> np.savez -> np.load -> from_arrays scores samples exactly as the set it came from."""
    rng = np.random.default_rng(3)
    ref = reference_set(rng.standard_normal((1500, 2)), "identity", 3)
    np.savez(tmp_path / "ref.npz", **ref.to_arrays())
    with np.load(tmp_path / "ref.npz", allow_pickle=False) as f:
        loaded = ReferenceSet.from_arrays(f)
    assert (loaded.feature_name, loaded.k) == ("identity", 3)
    assert torch.equal(loaded.features, ref.features) and torch.equal(loaded.radii, ref.radii)
    assert np.array_equal(loaded.mu, ref.mu) and np.array_equal(loaded.sigma, ref.sigma)
    x = 0.9 * rng.standard_normal((1200, 2))
    assert sample_metrics(x, loaded) == sample_metrics(x, ref)
    assert sample_metrics(x, ref)["fid"] == frechet_distance(identity_features(x), ref.features)
    bad = ref.to_arrays() | {"sigma": np.eye(3)}
    with pytest.raises(ValueError, match="sigma"):
        ReferenceSet.from_arrays(bad)


def test_importing_metrics_does_not_import_torch_fidelity():
    code = "import sys, components.scoring.metrics; assert 'torch_fidelity' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_stackedmnist_modes_all_once_cover_everything_with_kl_zero():
    m = label_mode_metrics(np.arange(1000), 1000)
    assert m == {"label_modes": 1000, "label_kl": 0.0}
    m = label_mode_metrics(np.tile(np.arange(1000), 26), 1000)  # 26,000 samples, 26 in every mode
    assert m["label_modes"] == 1000 and m["label_kl"] == pytest.approx(0.0, abs=1e-12)


def test_one_stackedmnist_triple_26000_times_is_one_mode_with_kl_log_1000():
    m = label_mode_metrics(np.full(26_000, 123), 1000)
    assert m["label_modes"] == 1 and m["label_kl"] == pytest.approx(np.log(1000), rel=1e-12)


def test_half_the_modes_evenly_give_kl_log_2():
    m = label_mode_metrics(np.repeat(np.arange(0, 1000, 2), 3), 1000)
    assert m["label_modes"] == 500 and m["label_kl"] == pytest.approx(np.log(2), rel=1e-12)


def test_labels_outside_the_modes_are_refused():
    with pytest.raises(ValueError, match="expected \\[0, 999\\]"):
        label_mode_metrics(np.array([0, 1000]), 1000)


def test_stack_modes_come_from_each_channels_digit():
    """The evaluator's logits (N, 3, 10) of three channels give the mode 100 d0 + 10 d1 + d2, and sample_metrics adds
    the mode count and KL only where a sample holds several digits."""
    digits = np.array([[1, 2, 3], [9, 0, 0], [1, 2, 3], [0, 0, 7]])
    logits = torch.zeros(4, 3, 10, device="cpu")
    logits.scatter_(2, torch.from_numpy(digits)[:, :, None], 4.0)
    assert evaluator_labels(logits).tolist() == [123, 900, 123, 7]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 2))
    ref = reference_set(rng.standard_normal((50, 2)))
    judge = Extractor("judge", lambda s: (identity_features(s), logits))
    m = sample_metrics(x, ref, extractor=judge, kid_subsets=2, kid_subset_size=4)
    p = np.array([2, 1, 1]) / 4
    assert m["label_modes"] == 3 and m["label_kl"] == pytest.approx(float(np.sum(p * np.log(p * 1000))))
    one = Extractor("one digit", lambda s: (identity_features(s), logits[:, :1]))
    assert "label_modes" not in sample_metrics(x, ref, extractor=one, kid_subsets=2, kid_subset_size=4)
