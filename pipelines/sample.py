"""Stage `sample@<cell>`: draw N samples with one sweep cell's sampler from the EMA weights.

    python -m pipelines.sample <cell> <checkpoint.pt> <reference.npz> <samples.npz> <scatter.png>

Cells with `model: exact` swap the network for the data set's closed-form eps*
(components/gaussian_mixture.py): same sampler, same schedule, no model error.

Wall time is measured after an untimed warm-up batch and reported per 1,000 samples; NFE is
the number of network evaluations per sample.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from components.data import to_data
from components.gaussian_mixture import mixture_eps_model
from components.networks import make_network
from components.samplers import SAMPLERS
from components.schedules import make_schedule, make_trajectory, respace
from pipelines.io import (
    InputError, atomic_save_figure, atomic_save_npz, entry_point, load_checkpoint, load_dataset, progress_enabled,
    stage_args,
)
from pipelines.params import ParamsError, load_params
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


def exact_model(ref_path: str, full_sched, cell_name: str):
    """The closed-form eps* of the data set's Gaussian mixture, in model space: the sampler's ceiling."""
    ds = load_dataset(ref_path)
    if ds.modes is None:
        raise InputError(f"{ref_path}: sweep.{cell_name}.model 'exact' needs a data set with mixture modes")
    return mixture_eps_model(full_sched, ds.to_model(ds.modes), ds.mode_std * ds.scale)


def main(argv: list[str]) -> None:
    cell_name, ckpt_path, ref_path, samples_path, png_path = stage_args(
        argv, ("cell", "checkpoint.pt", "reference.npz", "samples.npz", "scatter.png"))
    params = load_params()
    if cell_name not in params.sweep:
        raise ParamsError(f"params.yaml: sweep.{cell_name}: no such cell; allowed: {', '.join(params.sweep)}")
    cell, p = params.sweep[cell_name], params.sample
    model, cfg = load_ema_model(ckpt_path)  # its config fixes the schedule, T and model space for every cell
    T, shape = cfg["diffusion"]["T"], tuple(cfg["data_shape"])
    if cell.steps > T:
        raise InputError(f"{ckpt_path}: trained with T={T}, but sweep.{cell_name}.steps = {cell.steps}")
    full = make_schedule(cfg["diffusion"]["schedule"], T)
    if cell.model == "exact":
        model = exact_model(ref_path, full, cell_name)
    sched = respace(full, make_trajectory(cell.trajectory, T, cell.steps))
    sampler, kwargs = SAMPLERS[cell.sampler], cell.sampler_kwargs()

    if p.warmup:  # untimed: first-call allocations and kernel selection stay out of the timing
        draw(sampler, model, sched, p.warmup, p.batch_size, shape, torch.Generator().manual_seed(p.seed + 1), kwargs, False)
    generator = torch.Generator().manual_seed(p.seed)
    t0 = time.perf_counter()
    x = draw(sampler, model, sched, p.n, p.batch_size, shape, generator, kwargs, progress_enabled())
    wall = time.perf_counter() - t0

    x_data = to_data(x.numpy(), cfg["data"]["shift"], cfg["data"]["scale"])  # metrics live in data units
    nfe = len(sched)  # one network evaluation per step
    per_1k = wall / p.n * 1000
    atomic_save_npz(samples_path, x=x_data, nfe=np.int64(nfe), wall_s=np.float64(wall), wall_s_per_1k=np.float64(per_1k))
    title = f"{cell_name}: NFE {nfe}, {per_1k:.3f} s / 1k samples"
    atomic_save_figure(png_path, samples_figure(x_data, title))
    print(f"sample@{cell_name}: {p.n} samples, NFE {nfe}, {wall:.2f} s ({per_1k:.3f} s per 1k)")
    log_stage_run(StageRun(
        f"sample@{cell_name}", params={"cell": dataclasses.asdict(cell), "sample": dataclasses.asdict(p)},
        metrics={"nfe": nfe, "wall_s": wall, "wall_s_per_1k": per_1k}, artifacts=[Path(png_path)],
        tags={"cell": cell_name},
    ))


if __name__ == "__main__":
    entry_point(main)
