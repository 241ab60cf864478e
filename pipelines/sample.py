"""Stage `sample@<cell>`: draw N samples with one sweep cell's sampler from a trained model's EMA weights.

    python -m pipelines.sample <cell> <checkpoint.pt> <reference.npz> <samples.npz> <scatter.png>

Wall time is measured after an untimed warm-up batch and reported per 1,000 samples; NFE is
the number of network evaluations per sample. An ancestral (DDPM) cell is also a latent-variable
model, so the stage computes its variational bound (DDPM eq. 5) on the held-out reference split,
on the cell's own chain (the respaced one for fewer steps). `run_cell` is shared with
`sample_exact`, `sample_guided` and `sample_ddgan`: a cell with a guidance `scale` draws one
target label per sample (seed `guidance.label_seed`) and guides each batch towards its labels;
the labels are saved with the samples for the target-hit rate.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import numpy as np
import torch

from components.data import DATASETS, Dataset, to_data
from components.ddgan import Generator
from components.guidance import Classifier, classifier_grad
from components.likelihood import bound_per_dim, variational_bound
from components.networks import make_classifier, make_generator, make_network
from components.samplers import SAMPLERS, EpsModel, sample_ddgan
from components.schedules import Schedule, make_schedule, make_trajectory, respace
from pipelines.io import (
    InputError, NonFiniteError, atomic_save_figure, atomic_save_npz, entry_point, first_line, load_checkpoint,
    load_dataset, progress_enabled, stage_args,
)
from pipelines.params import CellParams, Params, ParamsError, load_params
from pipelines.plots import samples_figure
from pipelines.tracking import StageRun, log_stage_run


# Every table row's sampler by name: the eps-model samplers of the sweeps, and DDGAN's generator sampler.
CELL_SAMPLERS = {**SAMPLERS, "ddgan": sample_ddgan}


def _load_ema(ckpt_path: str, build) -> tuple[torch.nn.Module, dict]:
    """The EMA weights of a training checkpoint in `build(config)`'s network, eval mode, and the config."""
    ckpt = load_checkpoint(ckpt_path, ("ema", "config"))
    cfg = ckpt["config"]
    try:
        net = build(cfg)
        net.load_state_dict(ckpt["ema"])
    except (ValueError, TypeError, RuntimeError, KeyError) as e:
        raise InputError(f"{ckpt_path}: EMA weights do not fit the network in its config ({first_line(e)})") from None
    return net.eval().requires_grad_(False), cfg


def load_ema_model(ckpt_path: str) -> tuple[torch.nn.Module, dict]:
    """eps_theta (train_ddpm, finetune_iddpm) with its EMA weights, and the checkpoint's config."""
    def build(cfg):
        net_cfg = dict(cfg["network"])
        return make_network(net_cfg.pop("name"), tuple(cfg["data_shape"]), **net_cfg)
    return _load_ema(ckpt_path, build)


def load_ema_classifier(ckpt_path: str) -> tuple[torch.nn.Module, dict]:
    """p_phi(y | x_t, t) (train_classifier) with its EMA weights, and the checkpoint's config."""
    def build(cfg):
        net_cfg = dict(cfg["network"])
        return make_classifier(net_cfg.pop("name"), tuple(cfg["data_shape"]), cfg["n_classes"], **net_cfg)
    return _load_ema(ckpt_path, build)


def load_ema_generator(ckpt_path: str) -> tuple[torch.nn.Module, dict]:
    """DDGAN's G(x_t, t, z) (train_ddgan) with its EMA weights, and the checkpoint's config."""
    def build(cfg):
        net_cfg = dict(cfg["generator"])
        return make_generator(net_cfg.pop("name"), tuple(cfg["data_shape"]), **net_cfg)
    return _load_ema(ckpt_path, build)


def check_cell_model(cell_key: str, cell: CellParams, ckpt_path: str, cfg: dict, ref_path: str, ref: Dataset) -> None:
    """The checkpoint can run this cell on this reference split; InputError naming the file otherwise."""
    T = cfg["diffusion"]["T"]
    if cell.steps > T:
        raise InputError(f"{ckpt_path}: trained with T={T}, but {cell_key}.steps = {cell.steps}")
    if cell.variance == "learned" and cfg["network"].get("out_mult", 1) != 2:
        raise InputError(f"{ckpt_path}: {cell_key}.variance 'learned' needs a model with a variance output")
    if (ref.shift, ref.scale) != (cfg["data"]["shift"], cfg["data"]["scale"]):
        raise InputError(f"{ref_path}: its model-space map differs from the one {ckpt_path} was trained with")


def draw(sampler, model, sched, n: int, batch_size: int, shape: tuple[int, ...], generator, kwargs, progress,
         guide=None) -> torch.Tensor:
    """Exactly n samples (no rounding down), in batches, all noise from `generator`.

    guide(batch) -> the guidance gradient function for the samples in slice `batch`, if guided.
    """
    out = []
    for start in range(0, n, batch_size):
        batch = slice(start, min(start + batch_size, n))
        x_T = torch.randn((batch.stop - start, *shape), generator=generator)
        extra = {} if guide is None else {"guidance": guide(batch)}
        out.append(sampler(model, sched, x_T, generator=generator, progress=progress, **kwargs, **extra))
    return torch.cat(out)


def target_labels(n: int, n_classes: int, seed: int) -> torch.Tensor:
    """Guided cells' targets: y ~ U{0..K-1}, one per sample, from their own seed (the sampler's noise stream is untouched)."""
    return torch.randint(n_classes, (n,), generator=torch.Generator().manual_seed(seed))


def guide_for(classifier: Classifier | None, y: torch.Tensor, scale: float | None):
    """draw's per-batch guidance for targets y at scale s; None when unguided or s = 0, which then runs the
    unguided sampler itself: its samples are the unguided cell's, bit for bit, and it costs no classifier pass."""
    if not scale:
        return None
    if classifier is None:
        raise ValueError(f"a cell guided at scale {scale:g} needs a classifier")
    return lambda batch: classifier_grad(classifier, y[batch], scale)


def bound(model: EpsModel, sched: Schedule, cell: CellParams, ref: Dataset, params: Params) -> dict[str, np.ndarray]:
    """The cell's variational bound on the first nll.n reference points: mean, standard error, per-term means."""
    nll, decoder = params.nll, DATASETS[params.data.name].decoder
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


def run_cell(stage: str, cell_name: str, cell: CellParams, model: EpsModel | Generator, full: Schedule,
             shape: tuple[int, ...], ref: Dataset, params: Params, samples_path: str, png_path: str,
             classifier: Classifier | None = None, n_classes: int | None = None) -> None:
    """Sample the cell (timed), compute its bound if it has one, write samples and scatter, log to MLflow.

    A cell with a guidance scale needs `classifier` (logits over `n_classes`) and draws its targets.
    """
    p = params.sample
    sched = respace(full, make_trajectory(cell.trajectory, len(full), cell.steps))
    sampler, kwargs = CELL_SAMPLERS[cell.sampler], cell.sampler_kwargs()
    guided = cell.scale is not None
    seed = params.guidance.label_seed
    y = target_labels(p.n, n_classes, seed) if guided else None
    if p.warmup:  # untimed: first-call allocations and kernel selection stay out of the timing
        guide = guide_for(classifier, target_labels(p.warmup, n_classes, seed + 1), cell.scale) if guided else None
        draw(sampler, model, sched, p.warmup, p.batch_size, shape, torch.Generator().manual_seed(p.seed + 1), kwargs,
             False, guide)
    generator = torch.Generator().manual_seed(p.seed)
    t0 = time.perf_counter()
    x = draw(sampler, model, sched, p.n, p.batch_size, shape, generator, kwargs, progress_enabled(),
             guide_for(classifier, y, cell.scale) if guided else None)
    wall = time.perf_counter() - t0
    bad = int((~torch.isfinite(x)).any(dim=tuple(range(1, x.dim()))).sum())
    if bad:
        raise NonFiniteError(f"{stage}: {bad} of {p.n} samples are non-finite: the sampler diverged; nothing written")

    likelihood, nll_s = {}, 0.0
    if cell.has_likelihood:
        t0 = time.perf_counter()
        likelihood = bound(model, sched, cell, ref, params)
        nll_s = time.perf_counter() - t0

    x_data = to_data(x.numpy(), ref.shift, ref.scale)  # metrics live in data units
    nfe = len(sched)  # one network evaluation per step
    per_1k = wall / p.n * 1000
    targets = {"y": y.numpy(), "scale": np.float64(cell.scale)} if guided else {}
    atomic_save_npz(samples_path, x=x_data, nfe=np.int64(nfe), wall_s=np.float64(wall), wall_s_per_1k=np.float64(per_1k),
                    **likelihood, **targets)
    title = f"{cell_name}: NFE {nfe}, {per_1k:.3f} s / 1k samples"
    if guided:
        title += f", guidance s = {cell.scale:g} (colour: target)"
    atomic_save_figure(png_path, samples_figure(x_data, title, labels=None if y is None else y.numpy()))
    nll_text = f"; bound {likelihood['nll']:.4f} ± {likelihood['nll_se']:.4f} nats/dim ({nll_s:.1f} s)" if likelihood else ""
    guide_text = f", guided at s = {cell.scale:g} towards {n_classes} classes" if guided else ""
    print(f"{stage}: {p.n} samples, NFE {nfe}{guide_text}, {wall:.2f} s ({per_1k:.3f} s per 1k){nll_text}")
    metrics = {"nfe": nfe, "wall_s": wall, "wall_s_per_1k": per_1k}
    if likelihood:
        metrics |= {"nll": float(likelihood["nll"]), "nll_se": float(likelihood["nll_se"]), "nll_s": nll_s}
    log_stage_run(StageRun(
        stage, params={"cell": dataclasses.asdict(cell), "sample": dataclasses.asdict(p),
                       **({"guidance": dataclasses.asdict(params.guidance)} if guided else {})}, metrics=metrics,
        artifacts=[Path(png_path)], tags={"cell": cell_name},
    ))


def main(argv: list[str]) -> None:
    cell_name, ckpt_path, ref_path, samples_path, png_path = stage_args(
        argv, ("cell", "checkpoint.pt", "reference.npz", "samples.npz", "scatter.png"))
    params = load_params()
    if cell_name not in params.sweep:
        raise ParamsError(f"params.yaml: sweep.{cell_name}: no such cell; allowed: {', '.join(params.sweep)}")
    cell = params.sweep[cell_name]
    model, cfg = load_ema_model(ckpt_path)  # its config fixes the schedule, T and model space
    ref = load_dataset(ref_path, params.data.name)
    check_cell_model(f"sweep.{cell_name}", cell, ckpt_path, cfg, ref_path, ref)
    full = make_schedule(cfg["diffusion"]["schedule"], cfg["diffusion"]["T"])
    run_cell(f"sample@{cell_name}", cell_name, cell, model, full, tuple(cfg["data_shape"]), ref, params, samples_path,
             png_path)


if __name__ == "__main__":
    entry_point(main)
