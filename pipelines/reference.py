"""Stage `reference`: what every cell is scored against, computed once per data set, and the ceiling row.

    python -m pipelines.reference <train.npz> <reference.npz> <reference_stats.npz> <data.json>

The held-out split's features, their k-NN radii (improved precision/recall, Kynkaanniemi et al.
2019) and their Gaussian fit (FID, Heusel et al. 2017) go to `reference_stats.npz`, which every
sample stage reads to score its own cell. The row `data` scores `sample.n` points of the train
split the same way: what a perfect sampler would reach on each metric. Its `nll` is the true
mixture density's NLL on the points every bound is computed on (the first `nll.n` reference points).
"""

from __future__ import annotations

import dataclasses

from components.gaussian_mixture import mixture_log_prob
from components.metrics import reference_set, sample_metrics
from pipelines.io import atomic_save_npz, atomic_write_json, entry_point, load_dataset, stage_args
from pipelines.params import load_params
from pipelines.tracking import StageRun, log_stage_run


def main(argv: list[str]) -> None:
    train_path, ref_path, stats_path, data_json = stage_args(
        argv, ("train.npz", "reference.npz", "reference_stats.npz", "data.json"))
    params = load_params()
    e, name = params.evaluate, params.data.name
    ref, train = load_dataset(ref_path, name), load_dataset(train_path, name)
    reference = reference_set(ref.x, e.features, e.k)
    atomic_save_npz(stats_path, **reference.to_arrays())
    row = {"nfe": 0, **sample_metrics(train.x[: params.sample.n], reference, modes=ref.modes, mode_std=ref.mode_std,
                                      n_std=e.n_std, min_count=e.min_mode_count)}
    if ref.modes is not None:  # the true density is known: the bound's floor, per dimension
        points = ref.x[: params.nll.n]
        row["nll"] = float(-mixture_log_prob(points, ref.modes, ref.mode_std).mean() / points[0].size)
    atomic_write_json(data_json, row)
    print(f"reference: {len(ref.x)} reference points ({e.features} features, k = {e.k}); data row: "
          + ", ".join(f"{k} {v:.4g}" for k, v in row.items()))
    log_stage_run(StageRun("reference", params={"evaluate": dataclasses.asdict(e), "sample": {"n": params.sample.n}},
                           metrics=row, tags={"cell": "data"}))


if __name__ == "__main__":
    entry_point(main)
