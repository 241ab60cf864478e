"""Trilemma metrics, computed in data units on features.

FID and precision/recall go through a feature extractor chosen by name (components/features.py):
`identity` for points, so both are computed on the coordinates themselves; a CNN for images.
FID is torch-fidelity's feature-level function. Precision/recall is torch-fidelity's full-matrix
algorithm on its own distance function, arranged so that the reference split's k-NN radii are
computed once for every row (`ReferenceSet`) instead of once per row; tests/test_metrics.py
checks that it returns exactly what `torch_fidelity.metric_prc.prc_features_to_metric` does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_prc import calc_cdist_full

from components.features import FEATURE_EXTRACTORS


def frechet_distance(features: torch.Tensor, ref_features: torch.Tensor) -> float:
    """FID (Heusel et al. 2017): ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2) between Gaussian fits."""
    stats = fid_features_to_statistics(features), fid_features_to_statistics(ref_features)
    return float(fid_statistics_to_metric(*stats, verbose=False)[KEY_METRIC_FID])


PRC_BATCH = 10_000  # torch-fidelity's prc_batch_size default


def knn_radii(features: torch.Tensor, k: int) -> torch.Tensor:
    """Each point's distance to its k-th nearest neighbour within the same set, itself excluded: the k-NN ball radii."""
    features = features.float()
    return calc_cdist_full(features, features, PRC_BATCH).topk(k + 1, dim=1, largest=False).values[:, -1]


def precision_recall(features: torch.Tensor, ref_features: torch.Tensor, k: int = 3,
                     ref_radii: torch.Tensor | None = None) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) with k-NN balls; generated first, real second.

    precision: share of generated points inside some reference point's k-NN ball; recall: share
    of reference points inside some generated point's ball. `ref_radii` = knn_radii(ref_features, k),
    if already computed.
    """
    features, ref_features = features.float(), ref_features.float()
    radii = knn_radii(features, k)
    ref_radii = knn_radii(ref_features, k) if ref_radii is None else ref_radii
    dist = calc_cdist_full(ref_features, features, PRC_BATCH)  # (N_ref, N)
    recall = (dist <= radii).any(dim=1).float().mean().item()
    precision = (dist.T <= ref_radii).any(dim=1).float().mean().item()
    return precision, recall


@dataclass(frozen=True)
class ReferenceSet:
    """The held-out split as every row is scored against it: features and their k-NN radii, computed once."""

    features: torch.Tensor  # (N, F)
    radii: torch.Tensor  # (N,) k-NN radii of the features (precision's balls)
    feature_name: str
    k: int


def reference_set(x: np.ndarray, features: str = "identity", k: int = 3) -> ReferenceSet:
    """Extract the reference features and their k-NN radii once, for all rows."""
    f = FEATURE_EXTRACTORS[features](x)
    return ReferenceSet(f, knn_radii(f, k), features, k)


def nearest_mode(x: np.ndarray, modes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of each sample's nearest mode (N,) and the distance to it (N,), data units."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    dist = np.linalg.norm(x[:, None, :] - modes[None].astype(np.float64), axis=-1)  # (N, K)
    nearest = dist.argmin(axis=1)
    return nearest, dist[np.arange(len(x)), nearest]


def target_hit_rate(x: np.ndarray, y: np.ndarray, modes: np.ndarray) -> float:
    """Classifier guidance's target-hit rate: the share of samples whose nearest mode is their target label y."""
    return float((nearest_mode(x, modes)[0] == np.asarray(y)).mean())


def mode_metrics(
    x: np.ndarray, modes: np.ndarray, mode_std: float, n_std: float = 3.0, min_count: int = 20
) -> dict[str, float]:
    """25-Gaussians protocol (VEEGAN / PacGAN): quality, coverage and KL over the modes.

    - hq_fraction: share of samples within n_std * mode_std of their nearest mode;
    - modes: modes that hold at least min_count high-quality samples;
    - kl_uniform: KL(histogram of high-quality samples over the modes || uniform), in nats.
    """
    nearest, dist = nearest_mode(x, modes)
    hq = dist <= n_std * mode_std
    counts = np.bincount(nearest[hq], minlength=len(modes))
    p = counts / max(counts.sum(), 1)
    nz = p > 0
    kl = float(np.sum(p[nz] * np.log(p[nz] * len(modes)))) if counts.sum() else float("nan")
    return {"hq_fraction": float(hq.mean()), "modes": int((counts >= min_count).sum()), "kl_uniform": kl}


def sample_metrics(
    x: np.ndarray,
    ref: ReferenceSet,
    *,
    modes: np.ndarray | None = None,
    mode_std: float | None = None,
    n_std: float = 3.0,
    min_count: int = 20,
) -> dict[str, float]:
    """All trilemma quality/diversity metrics of samples x against the reference split (data units)."""
    f = FEATURE_EXTRACTORS[ref.feature_name](x)
    precision, recall = precision_recall(f, ref.features, ref.k, ref.radii)
    out = {"fid": frechet_distance(f, ref.features), "precision": precision, "recall": recall}
    if modes is not None:
        out |= mode_metrics(x, modes, mode_std, n_std, min_count)
    return out
