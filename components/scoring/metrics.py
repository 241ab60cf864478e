"""Trilemma metrics, computed in data units on features.

FID and precision/recall go through a feature extractor chosen by name (components/scoring/features.py):
`identity` for points, so both are computed on the coordinates themselves; a CNN for images.

Both reproduce torch-fidelity 0.4.0 exactly without importing it (its import costs every sampling
stage ~1.7 s on top of torch); tests/components/scoring/test_metrics.py checks equality (==) against it:

- FID (Heusel et al. 2017) with torch-fidelity's numpy operations, split into the per-set Gaussian
  fit (`fid_statistics`), which the reference split computes once and saves, and the distance
  between two fits (`frechet_distance_from_statistics`);
- improved precision/recall (Kynkaanniemi et al. 2019) with torch-fidelity's definitions
  (`torch.cdist` on float32 features, k-NN radius = the (k+1)-th smallest distance within the set,
  the point itself included at 0), but in tiles, never holding the N x N distance matrix.
  `ReferenceSet` holds what the reference split contributes: its features, k-NN radii and Gaussian fit.

Why the tiles follow torch-fidelity's blocks: `torch.cdist` on more than 25 x 25 points computes
||x||^2 + ||y||^2 - 2 x.y through a BLAS matrix product, and MKL rounds a few elements of a product
differently when one side has fewer than ~12 rows, so a distance may depend on the shape of the
call that computed it. The tiles therefore cut torch-fidelity's own `prc_batch_size` (PRC_BATCH)
blocks into parts of at least MIN_TILE points per side, and leave a block whole where one side
is shorter than that (the last block of a set of, say, 10,003 points), so every distance is
computed in a call of the same kind as torch-fidelity's.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from components.scoring.features import Extractor
from components.scoring.registry import FEATURE_EXTRACTORS


def fid_statistics(features: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The Gaussian fit of FID (Heusel et al. 2017): mean (F,) and sample covariance (F, F) of (N, F) features.

    torch-fidelity's `fid_features_to_statistics`: numpy on the features as given (no cast).
    """
    f = features.detach().cpu().numpy() if torch.is_tensor(features) else np.asarray(features)
    return np.mean(f, axis=0), np.cov(f, rowvar=False)


def frechet_distance_from_statistics(mu1: np.ndarray, sigma1: np.ndarray,
                                     mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """FID (Heusel et al. 2017): ||mu1 - mu2||^2 + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^1/2) between two Gaussian fits.

    Tr((S1 S2)^1/2) is the sum of the square roots of S1 S2's eigenvalues, real parts: torch-fidelity's
    `fid_statistics_to_metric`, operation for operation.
    """
    diff = mu1 - mu2
    tr_covmean = np.sum(np.sqrt(np.linalg.eigvals(sigma1.dot(sigma2)).astype(np.complex128)).real)
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


def frechet_distance(features: torch.Tensor, ref_features: torch.Tensor) -> float:
    """FID (Heusel et al. 2017) between the Gaussian fits of two feature sets."""
    return frechet_distance_from_statistics(*fid_statistics(features), *fid_statistics(ref_features))


PRC_BATCH = 10_000  # torch-fidelity's prc_batch_size default: the blocks whose distances the tiles reproduce
BLOCK = 4096  # tile side: one tile of float32 distances is 4 * 4096**2 B = 64 MiB
MIN_TILE = 32  # shortest tile side cut from a block (MKL rounds products with < ~12 rows differently)


def _spans(start: int, stop: int, block: int) -> list[tuple[int, int]]:
    """[start, stop) cut into ceil(len / block) near-equal parts: at most block, at least min(len, block // 2)."""
    n = stop - start
    m = -(-n // block)
    return [(start + j * n // m, start + (j + 1) * n // m) for j in range(m)]


def _tiles(n_rows: int, n_cols: int, block: int, batch: int) -> Iterator[tuple[tuple[int, int], tuple[int, int]]]:
    """(row span, column span) of the tiles covering an n_rows x n_cols distance matrix.

    Each of torch-fidelity's batch x batch blocks is cut into tiles of at most block x block, except a
    block with a side shorter than MIN_TILE, which is one tile (at most (MIN_TILE - 1) x batch).
    """
    if block < 2 * MIN_TILE:
        raise ValueError(f"block must be at least {2 * MIN_TILE}, got {block}")
    for r0 in range(0, n_rows, batch):
        r1 = min(r0 + batch, n_rows)
        for c0 in range(0, n_cols, batch):
            c1 = min(c0 + batch, n_cols)
            if min(r1 - r0, c1 - c0) < MIN_TILE:
                yield (r0, r1), (c0, c1)
            else:
                for rows in _spans(r0, r1, block):
                    for cols in _spans(c0, c1, block):
                        yield rows, cols


def knn_radii(features: torch.Tensor, k: int, *, block: int = BLOCK, batch: int = PRC_BATCH) -> torch.Tensor:
    """Each point's distance to its k-th nearest neighbour within the same set, itself excluded: the k-NN ball radii.

    Kynkaanniemi et al. 2019's radius, as torch-fidelity computes it: the (k+1)-th smallest of the row
    of float32 `torch.cdist` distances (the point's own 0 is the first). A running top-(k+1) over the
    row's tiles: the k+1 smallest of a union are the k+1 smallest of the parts' k+1 smallest, so the
    value is exact, ties included. Memory: one tile (see `precision_recall`) plus (N, k+1) float32.
    """
    features = features.float()
    n = len(features)
    if n <= k:
        raise ValueError(f"k-NN radii need more than k = {k} points, got {n}")
    smallest = torch.full((n, k + 1), torch.inf, dtype=features.dtype, device=features.device)
    for (r0, r1), (c0, c1) in _tiles(n, n, block, batch):
        dist = torch.cdist(features[r0:r1], features[c0:c1])
        tile_smallest = dist.topk(min(k + 1, c1 - c0), dim=1, largest=False).values
        del dist
        smallest[r0:r1] = torch.cat([smallest[r0:r1], tile_smallest], dim=1).topk(k + 1, dim=1, largest=False).values
    return smallest[:, -1].clone()


def precision_recall(features: torch.Tensor, ref_features: torch.Tensor, k: int = 3,
                     ref_radii: torch.Tensor | None = None, *, block: int = BLOCK,
                     batch: int = PRC_BATCH) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) with k-NN balls; generated first, real second.

    precision: share of generated points inside some reference point's k-NN ball (d <= radius);
    recall: share of reference points inside some generated point's ball. `ref_radii` =
    knn_radii(ref_features, k), if already computed.

    Both come from tiles of torch-fidelity's reference x generated distances (`torch.cdist(ref, gen)`,
    its orientation: cdist is not exactly symmetric), each reduced with "any" at once and skipped
    when all its rows and columns are already inside a ball.

    Memory beyond the float32 features: one tile of float32 distances and one of booleans,
    5 * block**2 bytes, whatever N (80 MiB at the default block = 4096; a block's short last side
    makes tiles of at most 5 * (MIN_TILE - 1) * batch bytes = 1.5 MiB), plus cdist's padded copies
    of a tile's points, 8 * block * (F + 2) bytes, and O(N) vectors: radii, hit flags and the k-NN
    search's (N, k+1) running minima, 4 * (k + 2) * N + N bytes per set. So 50,000 x 50,000
    points take about 80 MiB + 2 MiB (k = 3), where the full distance matrix alone would take 10 GB.
    """
    features, ref_features = features.float(), ref_features.float()
    radii = knn_radii(features, k, block=block, batch=batch)
    ref_radii = knn_radii(ref_features, k, block=block, batch=batch) if ref_radii is None else ref_radii
    ref_in_ball = torch.zeros(len(ref_features), dtype=torch.bool, device=ref_features.device)  # recall's hits
    in_ref_ball = torch.zeros(len(features), dtype=torch.bool, device=features.device)  # precision's hits
    for (r0, r1), (c0, c1) in _tiles(len(ref_features), len(features), block, batch):
        if ref_in_ball[r0:r1].all() and in_ref_ball[c0:c1].all():
            continue
        dist = torch.cdist(ref_features[r0:r1], features[c0:c1])  # (ref rows, generated columns)
        ref_in_ball[r0:r1] |= (dist <= radii[c0:c1]).any(dim=1)
        in_ref_ball[c0:c1] |= (dist <= ref_radii[r0:r1, None]).any(dim=0)
        del dist
    return in_ref_ball.float().mean().item(), ref_in_ball.float().mean().item()


@dataclass(frozen=True)
class ReferenceSet:
    """The reference set (a data split) as every row is scored against it, computed once: features, k-NN radii,
    Gaussian fit, and the extractor that made them (its registry kind, weights and config), so every row is scored
    by the same one.

    `to_arrays` / `from_arrays` convert to and from plain numpy arrays (np.savez / np.load with
    allow_pickle=False), so one stage computes it and every sample stage reads it.
    """

    features: torch.Tensor  # (N, F)
    radii: torch.Tensor  # (N,) float32 k-NN radii of the features (precision's balls, Kynkaanniemi et al. 2019)
    feature_name: str  # the extractor's name, with a short hash of its weights (components/scoring/features.py)
    k: int
    mu: np.ndarray  # (F,) mean of the features (FID's Gaussian fit, Heusel et al. 2017)
    sigma: np.ndarray  # (F, F) their sample covariance
    kind: str = "identity"  # FEATURE_EXTRACTORS' name of the extractor
    weights: Mapping[str, np.ndarray] = field(default_factory=dict)  # its state dict; none for the identity
    config: Mapping[str, Any] = field(default_factory=dict)  # its constructor's options

    ARRAYS: ClassVar[tuple[str, ...]] = ("features", "radii", "mu", "sigma", "feature_name", "k", "kind", "config")
    WEIGHT_PREFIX: ClassVar[str] = "weights/"

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain numpy arrays, one per field (strings and k as 0-d arrays, the config as JSON, each weight apart under
        `weights/<name>`): what np.savez writes."""
        return {"features": self.features.detach().cpu().numpy(), "radii": self.radii.detach().cpu().numpy(),
                "mu": np.asarray(self.mu), "sigma": np.asarray(self.sigma),
                "feature_name": np.array(self.feature_name), "k": np.array(self.k), "kind": np.array(self.kind),
                "config": np.array(json.dumps(dict(self.config), sort_keys=True)),
                **{self.WEIGHT_PREFIX + name: np.asarray(w) for name, w in self.weights.items()}}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> ReferenceSet:
        """The inverse of `to_arrays` (e.g. on np.load's result); ValueError if the arrays do not fit together."""
        a = {name: np.asarray(arrays[name]) for name in cls.ARRAYS}
        problem = _arrays_problem(a)
        if problem:
            raise ValueError(problem)
        weights = {name[len(cls.WEIGHT_PREFIX):]: np.asarray(arrays[name]).copy() for name in arrays
                   if name.startswith(cls.WEIGHT_PREFIX)}
        return cls(torch.tensor(a["features"], device="cpu"), torch.tensor(a["radii"], device="cpu"), str(a["feature_name"][()]),
                   int(a["k"][()]), a["mu"].copy(), a["sigma"].copy(), str(a["kind"][()]), weights,
                   json.loads(str(a["config"][()])))

    def extractor(self, device: torch.device | None = None) -> Extractor:
        """The extractor that made these features, rebuilt from the saved weights, on `device`."""
        weights = {name: torch.from_numpy(w) for name, w in self.weights.items()}
        return FEATURE_EXTRACTORS[self.kind](weights, dict(self.config), device)


def _arrays_problem(a: dict[str, np.ndarray]) -> str | None:
    """What keeps `a` from being a ReferenceSet's arrays, or None."""
    for name in ("features", "radii", "mu", "sigma"):
        if not np.issubdtype(a[name].dtype, np.floating):
            return f"{name} has dtype {a[name].dtype}, expected floats"
    if a["features"].ndim != 2:
        return f"features has shape {a['features'].shape}, expected (N, F)"
    n, f = a["features"].shape
    expected = {"radii": (n,), "mu": (f,), "sigma": (f, f)}
    for name, shape in expected.items():
        if a[name].shape != shape:
            return f"{name} has shape {a[name].shape}, expected {shape} for {n} features of size {f}"
    for name in ("feature_name", "kind", "config"):
        if a[name].shape != () or a[name].dtype.kind != "U":
            return f"{name} must be a 0-d string array, got shape {a[name].shape} and dtype {a[name].dtype}"
    if a["k"].shape != () or not np.issubdtype(a["k"].dtype, np.integer) or not 1 <= a["k"] < n:
        return f"k must be a 0-d integer array in [1, {n}), got {a['k']!r}"
    if a["kind"][()] not in FEATURE_EXTRACTORS:
        return f"kind {str(a['kind'][()])!r} is no feature extractor; allowed: {', '.join(FEATURE_EXTRACTORS)}"
    try:
        json.loads(str(a["config"][()]))
    except ValueError:
        return "config is not JSON"
    return None


def reference_set(x: np.ndarray, kind: str = "identity", k: int = 3, weights: Mapping[str, torch.Tensor] | None = None,
                  config: Mapping[str, Any] | None = None, device: torch.device | None = None) -> ReferenceSet:
    """Extract the reference features (with extractor `kind` and its weights), their k-NN radii and their Gaussian fit
    once, for all rows."""
    weights, config = dict(weights or {}), dict(config or {})
    extractor = FEATURE_EXTRACTORS[kind](weights, config, device)
    f = extractor.embed(x)[0]
    return ReferenceSet(f, knn_radii(f, k), extractor.name, k, *fid_statistics(f), kind,
                        {name: w.detach().cpu().numpy() for name, w in weights.items()}, config)


def nearest_mode(x: np.ndarray, modes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of each sample's nearest mode (N,) and the distance to it (N,), data units."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    dist = np.linalg.norm(x[:, None, :] - modes[None].astype(np.float64), axis=-1)  # (N, K)
    nearest = dist.argmin(axis=1)
    return nearest, dist[np.arange(len(x)), nearest]


def target_hit_rate(x: np.ndarray, y: np.ndarray, modes: np.ndarray) -> float:
    """Classifier guidance's target-hit rate on a mixture: the share of samples whose nearest mode is their target y."""
    return float((nearest_mode(x, modes)[0] == np.asarray(y)).mean())


def evaluator_labels(logits: torch.Tensor | np.ndarray) -> np.ndarray:
    """The label the evaluator reads in each image, (N,) int64, from its logits (N, G, K): the argmax of each of the
    G digits' logits, read as the digits of a base-K number, channel 0 first (G = 1: argmax of logits[:, 0];
    StackedMNIST: 100 d0 + 10 d1 + d2, components/data/digits.py)."""
    digits = torch.as_tensor(logits, device="cpu").argmax(-1).cpu().numpy().astype(np.int64)  # (N, G)
    K = logits.shape[-1]
    return digits @ (K ** np.arange(digits.shape[1] - 1, -1, -1, dtype=np.int64))


def label_accuracy(logits: torch.Tensor | np.ndarray, y: np.ndarray) -> float:
    """Share of images whose evaluator label (`evaluator_labels`) is y (N,). A guided cell's target-hit rate on images
    (y its targets) and an inpaint cell's class kept (y its sources' labels). The evaluator is the extractor's
    classifier (stage evaluator), which no sampler sees: a guidance classifier grading its own samples measures
    nothing."""
    return float(np.mean(evaluator_labels(logits) == np.asarray(y)))


def label_mode_metrics(labels: np.ndarray, n_modes: int) -> dict[str, float]:
    """StackedMNIST's mode coverage (VEEGAN, Srivastava et al. 2017; PacGAN; DDGAN Table 3) from the evaluator's
    label of each sample (N,) in [0, n_modes):

    - label_modes: how many of the n_modes labels at least one sample has (a mode is covered once it is seen);
    - label_kl: KL(histogram of the labels || uniform over the n_modes), in nats: 0 for a perfectly even
      histogram, log(n_modes) when every sample has the same label.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if labels.min() < 0 or labels.max() >= n_modes:
        raise ValueError(f"labels span [{labels.min()}, {labels.max()}], expected [0, {n_modes - 1}]")
    counts = np.bincount(labels, minlength=n_modes)
    p = counts / counts.sum()
    seen = p > 0
    return {"label_modes": int(seen.sum()), "label_kl": float(np.sum(p[seen] * np.log(p[seen] * n_modes)))}


def masked_mse(x: np.ndarray, source: np.ndarray, mask: np.ndarray) -> float:
    """Mean squared error of x against source (N, C, H, W) over the pixels where mask (C, H, W) is True only (an
    inpaint cell's sampled ones), in the arrays' units."""
    diff = (np.asarray(x, dtype=np.float64) - np.asarray(source, dtype=np.float64))[:, np.asarray(mask, dtype=bool)]
    return float(np.mean(diff**2))


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
    extractor: Extractor | None = None,
    modes: np.ndarray | None = None,
    mode_std: float | None = None,
    n_std: float = 3.0,
    min_count: int = 20,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    targets: np.ndarray | None = None,
    embedded: tuple[torch.Tensor, torch.Tensor | None] | None = None,
) -> dict[str, float]:
    """All trilemma quality/diversity metrics of samples x against the reference split (data units): FID and
    precision/recall on the extractor's features; with a classifier's logits (images) also KID (Binkowski et al.
    2018) and the classifier score (the Inception Score's formula); where the classifier reads several digits per
    image (StackedMNIST's three), the coverage of their label modes (`label_mode_metrics`); with a mixture's modes,
    their coverage. With
    guidance `targets` (N,), the target-hit rate: judged by the extractor's classifier where it has one
    (`label_accuracy`), else by the nearest mode. `embedded`: the extractor's (features, logits) of x if the
    caller has them already."""
    f, logits = embedded if embedded is not None else (extractor or ref.extractor()).embed(x)
    precision, recall = precision_recall(f, ref.features, ref.k, ref.radii)
    fid = frechet_distance_from_statistics(*fid_statistics(f), ref.mu, ref.sigma)
    out = {"fid": fid, "precision": precision, "recall": recall}
    if logits is not None:
        from components.scoring.evaluator import classifier_score, kid  # here: torch-fidelity (components/scoring/features.py)

        out["kid"], out["kid_std"] = kid(f, ref.features, kid_subsets, kid_subset_size)
        out["classifier_score"] = classifier_score(logits)
    if logits is not None and logits.shape[1] > 1:  # several digits per image (StackedMNIST): K^G label modes
        out |= label_mode_metrics(evaluator_labels(logits), logits.shape[-1] ** logits.shape[1])
    if modes is not None:
        out |= mode_metrics(x, modes, mode_std, n_std, min_count)
    if targets is not None and (logits is not None or modes is not None):
        out["target_hit"] = (label_accuracy(logits, targets) if logits is not None
                             else target_hit_rate(x, targets, modes))
    return out


def conditional_metrics(x: np.ndarray, weights: np.ndarray, centres: np.ndarray, std: float, *, n_std: float = 3.0,
                        min_weight: float = 1e-3) -> dict[str, float]:
    """Conditional samples against an exact conditional mixture (weights (K,), centres (K, D), isotropic std).

    - cond_hq: share of samples within n_std * std of the nearest centre the conditional gives at least
      `min_weight` of its mass (the correct modes);
    - cond_tv: total variation between those samples' histogram over the correct modes and the exact
      weights renormalised over them (how well the sampler splits its mass).
    """
    keep = np.flatnonzero(weights >= min_weight)
    nearest, dist = nearest_mode(x, centres[keep])
    hq = dist <= n_std * std
    counts = np.bincount(nearest[hq], minlength=len(keep))
    p = counts / max(counts.sum(), 1)
    w = weights[keep] / weights[keep].sum()
    tv = 0.5 * float(np.abs(p - w).sum()) if counts.sum() else float("nan")
    return {"cond_hq": float(hq.mean()), "cond_tv": tv}
