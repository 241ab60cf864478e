"""Stage `reference`: what every cell is scored against, computed once per data set, and the ceiling row.

    python -m pipelines.stages.reference <train.npz> <reference.npz> <evaluator.pt | identity> \
        <reference_stats.npz> <data.json>

The reference set's features (through the extractor stage `evaluator` wrote, or the identity for points), their
k-NN radii (improved precision/recall, Kynkaanniemi et al. 2019) and their Gaussian fit (FID, Heusel et al.
2017) go to `reference_stats.npz` with the extractor's weights, which every sample stage reads to score its own
cell with the same extractor. The reference set is params evaluate.reference's split: `test`, the held-out
reference split, or `train`, the train split (DDPM's CIFAR-10 FID convention). The row `data` scores up to
`sample.n` points of the other split the same way: what a perfect sampler would reach on each metric (for
images, the floor of FID and KID); against the train split that is held-out data, which a sampler that copied its
training set would beat. Its `nll` is the true density's NLL, where it is known, on the points every bound is
computed on (the first `nll.n` reference points).
"""

from __future__ import annotations

import dataclasses
import math

import torch

from components.data.datasets import DATASETS
from components.data.gaussian_mixture import mixture_log_prob
from components.math.likelihood import null_log_likelihood_bits
from components.scoring.metrics import reference_set, sample_metrics
from pipelines.plumbing.atomic import atomic_save_npz, atomic_write_json
from pipelines.plumbing.entry import entry_point, stage_args
from pipelines.plumbing.errors import InputError
from pipelines.plumbing.loading import load_checkpoint, load_dataset
from pipelines.params import load_params
from pipelines.plumbing.runtime import stage_runtime
from pipelines.plumbing.tracking_spool import StageRun, log_stage_run


def main(argv: list[str]) -> None:
    train_path, ref_path, evaluator_path, stats_path, data_json = stage_args(
        argv, ("train.npz", "reference.npz", "evaluator.pt", "reference_stats.npz", "data.json"))
    params = load_params()
    data, e = params.data, params.evaluate
    name, spec = data.name, DATASETS[data.name]
    ref, train = load_dataset(ref_path, name), load_dataset(train_path, name)
    kind, weights, config = load_evaluator(evaluator_path, e.features)
    device = stage_runtime(params).device
    against, scored = (train, ref) if e.reference == "train" else (ref, train)
    reference = reference_set(against.x, kind, e.k, weights, config, device)
    atomic_save_npz(stats_path, **reference.to_arrays())
    x = scored.x[: params.sample.n]
    row = {"nfe": 0, **({} if reference.kind == "identity" else {"extractor": reference.feature_name}),
           **sample_metrics(x, reference, extractor=reference.extractor(device), modes=ref.modes,
                            mode_std=ref.mode_std, n_std=e.n_std, min_count=e.min_mode_count,
                            kid_subsets=e.kid_subsets, kid_subset_size=e.kid_subset_size)}
    if spec.measures is not None:
        row |= spec.measures(x, data.std, e.n_std, e.min_mode_count)
    points = ref.x[: params.nll.n]
    log_p = (mixture_log_prob(points, ref.modes, ref.mode_std) if ref.modes is not None
             else spec.log_prob(points, data.std) if spec.log_prob is not None else None)
    if log_p is not None:  # the true density is known: the bound's floor, per dimension
        dims = points[0].size
        row["nll"] = float(-log_p.mean() / dims)
        row["k_bits"] = float(log_p.mean() - dims * math.log(ref.scale)) / math.log(2)  # model space
        row["k_minus_null_bits"] = row["k_bits"] - null_log_likelihood_bits(torch.from_numpy(ref.to_model(points)))
    atomic_write_json(data_json, row)
    print(f"reference: {len(against.x)} {e.reference} points ({reference.feature_name} features, k = {e.k}); "
          f"data row ({len(x)} {'train' if scored is train else 'test'} points): "
          + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
    log_stage_run(StageRun("reference",
                           params={"evaluate": dataclasses.asdict(e), "sample": {"n": params.sample.n}},
                           metrics={k: v for k, v in row.items() if not isinstance(v, str)},
                           tags={"cell": "data",
                                 "extractor": reference.feature_name}))


def load_evaluator(path: str, features: str) -> tuple[str, dict, dict]:
    """Stage evaluator's extractor (its kind, weights and config), or the identity where `path` is `identity`;
    InputError naming the file where it is not the kind params evaluate.features names."""
    if path == "identity":
        kind, weights, config = "identity", {}, {}
    else:
        ckpt = load_checkpoint(path, ("kind", "weights", "config"))
        kind, weights, config = ckpt["kind"], ckpt["weights"], ckpt["config"]
    if kind != features:
        raise InputError(f"{path}: a {kind!r} extractor, but params evaluate.features = {features!r}; rerun stage "
                         f"evaluator")
    return kind, weights, config


if __name__ == "__main__":
    entry_point(main)
