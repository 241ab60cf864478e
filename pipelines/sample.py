"""Stage `sample@<cell>`: draw N samples with one sweep cell's sampler from a trained model's EMA weights.

    python -m pipelines.sample <cell> <checkpoint.pt> <reference.npz> <samples.npz> <scatter.png>

Wall time is measured after an untimed warm-up batch and reported per 1,000 samples; NFE is
the number of network evaluations per sample. An ancestral (DDPM) cell is also a latent-variable
model, so the stage computes its variational bound (DDPM eq. 5) on the held-out reference split,
on the cell's own chain (the respaced one for fewer steps). `run_cell` is shared with
`sample_exact`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import numpy as np
import torch

from components.data import LIKELIHOOD_DECODERS, Dataset, to_data
from components.likelihood import bound_per_dim, variational_bound
from components.networks import make_network
from components.samplers import SAMPLERS, EpsModel
from components.schedules import Schedule, make_schedule, make_trajectory, respace
from pipelines.io import (
    InputError, atomic_save_figure, atomic_save_npz, entry_point, load_checkpoint, load_dataset, progress_enabled,
    stage_args,
)
from pipelines.params import CellParams, Params, ParamsError, load_params
from pipelines.plots import samples_figure
from pipelines.tracking import StageRun, log_stage_run


def load_ema_model(ckpt_path: str) -> tuple[torch.nn.Module, dict]:
    """The EMA network of a training checkpoint, in eval mode, and the checkpoint's config."""
    ckpt = load_checkpoint(ckpt_path, ("ema", "config"))
    cfg = ckpt["config"]
    net_cfg = dict(cfg["network"])
    try:
        net = make_network(net_cfg.pop("name"), tuple(cfg["data_shape"]), **net_cfg)
        net.load_state_dict(ckpt["ema"])
    except (ValueError, TypeError, RuntimeError, KeyError) as e:
        raise InputError(f"{ckpt_path}: EMA weights do not fit the network in its config ({str(e).splitlines()[0][:120]})") from None
    return net.eval().requires_grad_(False), cfg


def draw(sampler, model, sched, n: int, batch_size: int, shape: tuple[int, ...], generator, kwargs, progress) -> torch.Tensor:
    """Exactly n samples (no rounding down), in batches, all noise from `generator`."""
    out = []
    for start in range(0, n, batch_size):
        x_T = torch.randn((min(batch_size, n - start), *shape), generator=generator)
        out.append(sampler(model, sched, x_T, generator=generator, progress=progress, **kwargs))
    return torch.cat(out)


def bound(model: EpsModel, sched: Schedule, cell: CellParams, ref: Dataset, params: Params) -> dict[str, np.ndarray]:
    """The cell's variational bound on the first nll.n reference points: mean, standard error, per-term means."""
    nll, decoder = params.nll, LIKELIHOOD_DECODERS[params.data.name]
    x0 = torch.from_numpy(ref.to_model(ref.x[: nll.n]))  # (n, ...) model space
    dims = math.prod(x0.shape[1:])
    generator = torch.Generator().manual_seed(nll.seed)
    per_dim, terms, prior = [], [], []
    for start in range(0, len(x0), nll.batch_size):
        out = variational_bound(model, sched, x0[start:start + nll.batch_size], variance=cell.sampler_kwargs()["variance"],
                                generator=generator, decoder=decoder, clip_x0=cell.clip_x0)
        per_dim.append(bound_per_dim(out["total"], dims, decoder, ref.scale))
        terms.append(out["terms"].sum(1) / dims)  # (S,) nats/dim, model space, summed over the batch
        prior.append(out["prior"].sum() / dims)
    per_dim = torch.cat(per_dim)
    return {"nll": np.float64(per_dim.mean()), "nll_se": np.float64(per_dim.std() / math.sqrt(len(per_dim))),
            "nll_terms": (torch.stack(terms).sum(0) / len(x0)).numpy(), "nll_prior": np.float64(sum(prior) / len(x0))}


def run_cell(stage: str, cell: CellParams, model: EpsModel, full: Schedule, shape: tuple[int, ...], ref: Dataset,
             params: Params, samples_path: str, png_path: str) -> None:
    """Sample the cell (timed), compute its bound if it has one, write samples and scatter, log to MLflow."""
    p = params.sample
    sched = respace(full, make_trajectory(cell.trajectory, len(full), cell.steps))
    sampler, kwargs = SAMPLERS[cell.sampler], cell.sampler_kwargs()
    if p.warmup:  # untimed: first-call allocations and kernel selection stay out of the timing
        draw(sampler, model, sched, p.warmup, p.batch_size, shape, torch.Generator().manual_seed(p.seed + 1), kwargs, False)
    generator = torch.Generator().manual_seed(p.seed)
    t0 = time.perf_counter()
    x = draw(sampler, model, sched, p.n, p.batch_size, shape, generator, kwargs, progress_enabled())
    wall = time.perf_counter() - t0

    likelihood, nll_s = {}, 0.0
    if cell.has_likelihood:
        t0 = time.perf_counter()
        likelihood = bound(model, sched, cell, ref, params)
        nll_s = time.perf_counter() - t0

    x_data = to_data(x.numpy(), ref.shift, ref.scale)  # metrics live in data units
    nfe = len(sched)  # one network evaluation per step
    per_1k = wall / p.n * 1000
    atomic_save_npz(samples_path, x=x_data, nfe=np.int64(nfe), wall_s=np.float64(wall), wall_s_per_1k=np.float64(per_1k),
                    **likelihood)
    title = f"{stage.split('@')[-1]}: NFE {nfe}, {per_1k:.3f} s / 1k samples"
    atomic_save_figure(png_path, samples_figure(x_data, title))
    nll_text = f"; bound {likelihood['nll']:.4f} ± {likelihood['nll_se']:.4f} nats/dim ({nll_s:.1f} s)" if likelihood else ""
    print(f"{stage}: {p.n} samples, NFE {nfe}, {wall:.2f} s ({per_1k:.3f} s per 1k){nll_text}")
    metrics = {"nfe": nfe, "wall_s": wall, "wall_s_per_1k": per_1k}
    if likelihood:
        metrics |= {"nll": float(likelihood["nll"]), "nll_se": float(likelihood["nll_se"]), "nll_s": nll_s}
    log_stage_run(StageRun(
        stage, params={"cell": dataclasses.asdict(cell), "sample": dataclasses.asdict(p)}, metrics=metrics,
        artifacts=[Path(png_path)], tags={"cell": stage.split("@")[-1]},
    ))


def main(argv: list[str]) -> None:
    cell_name, ckpt_path, ref_path, samples_path, png_path = stage_args(
        argv, ("cell", "checkpoint.pt", "reference.npz", "samples.npz", "scatter.png"))
    params = load_params()
    if cell_name not in params.sweep:
        raise ParamsError(f"params.yaml: sweep.{cell_name}: no such cell; allowed: {', '.join(params.sweep)}")
    cell = params.sweep[cell_name]
    model, cfg = load_ema_model(ckpt_path)  # its config fixes the schedule, T and model space
    T, shape = cfg["diffusion"]["T"], tuple(cfg["data_shape"])
    if cell.steps > T:
        raise InputError(f"{ckpt_path}: trained with T={T}, but sweep.{cell_name}.steps = {cell.steps}")
    if cell.variance == "learned" and cfg["network"].get("out_mult", 1) != 2:
        raise InputError(f"{ckpt_path}: sweep.{cell_name}.variance 'learned' needs a model with a variance output")
    ref = load_dataset(ref_path)
    if (ref.shift, ref.scale) != (cfg["data"]["shift"], cfg["data"]["scale"]):
        raise InputError(f"{ref_path}: its model-space map differs from the one {ckpt_path} was trained with")
    run_cell(f"sample@{cell_name}", cell, model, make_schedule(cfg["diffusion"]["schedule"], T), shape, ref, params,
             samples_path, png_path)


if __name__ == "__main__":
    entry_point(main)
