"""Trilemma metrics, computed in data units on features.

FID and precision/recall go through a feature extractor chosen by name (components/features.py):
`identity` for points, so both are computed on the coordinates themselves; a CNN for images.
FID and precision/recall are torch-fidelity's feature-level functions, not reimplementations.
"""

from __future__ import annotations

import numpy as np
import torch
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_prc import KEY_METRIC_PRECISION, KEY_METRIC_RECALL, prc_features_to_metric

from components.features import FEATURE_EXTRACTORS


def frechet_distance(features: torch.Tensor, ref_features: torch.Tensor) -> float:
    """FID (Heusel et al. 2017): ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2) between Gaussian fits."""
    stats = fid_features_to_statistics(features), fid_features_to_statistics(ref_features)
    return float(fid_statistics_to_metric(*stats, verbose=False)[KEY_METRIC_FID])


def precision_recall(features: torch.Tensor, ref_features: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) with k-NN balls; generated first, real second."""
    out = prc_features_to_metric(
        features.float(), ref_features.float(), prc_neighborhood=k, prc_batch_size=10000, save_cpu_ram=False,
        verbose=False,
    )
    return float(out[KEY_METRIC_PRECISION]), float(out[KEY_METRIC_RECALL])


def mode_metrics(
    x: np.ndarray, modes: np.ndarray, mode_std: float, n_std: float = 3.0, min_count: int = 20
) -> dict[str, float]:
    """25-Gaussians protocol (VEEGAN / PacGAN): quality, coverage and KL over the modes.

    - hq_fraction: share of samples within n_std * mode_std of their nearest mode;
    - modes: modes that hold at least min_count high-quality samples;
    - kl_uniform: KL(histogram of high-quality samples over the modes || uniform), in nats.
    """
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    dist = np.linalg.norm(x[:, None, :] - modes[None].astype(np.float64), axis=-1)  # (N, K)
    nearest = dist.argmin(axis=1)
    hq = dist[np.arange(len(x)), nearest] <= n_std * mode_std
    counts = np.bincount(nearest[hq], minlength=len(modes))
    p = counts / max(counts.sum(), 1)
    nz = p > 0
    kl = float(np.sum(p[nz] * np.log(p[nz] * len(modes)))) if counts.sum() else float("nan")
    return {"hq_fraction": float(hq.mean()), "modes": int((counts >= min_count).sum()), "kl_uniform": kl}


def sample_metrics(
    x: np.ndarray,
    reference: np.ndarray,
    *,
    features: str = "identity",
    k: int = 3,
    modes: np.ndarray | None = None,
    mode_std: float | None = None,
    n_std: float = 3.0,
    min_count: int = 20,
) -> dict[str, float]:
    """All trilemma quality/diversity metrics of samples x against the reference split (data units)."""
    extract = FEATURE_EXTRACTORS[features]
    f, f_ref = extract(x), extract(reference)
    precision, recall = precision_recall(f, f_ref, k)
    out = {"fid": frechet_distance(f, f_ref), "precision": precision, "recall": recall}
    if modes is not None:
        out |= mode_metrics(x, modes, mode_std, n_std, min_count)
    return out
