"""Stage `sample@<cell>`: draw N samples with one sweep cell's sampler from a trained model's EMA weights.

    python -m pipelines.stages.sample <models/> <reference.npz> <reference_stats.npz> <samples/> <plots/> <cells/> <timing/>
    # DVC_STAGE=sample@<cell>; the model models/<its model>.pt, the outputs <folder>/<cell>.npz|png|json

The cell comes from DVC_STAGE, which DVC sets, never from the command line: dvc.yaml's cmd holds only fixed text
and the folders the project chose, so no name written in params.yaml reaches a shell.
The stage owns its cell's row of the trilemma table: it draws `sample.n` samples (deterministic
in `sample.seed`), scores them against the reference split's precomputed statistics (FID,
precision/recall, mode coverage; stage `reference`), and writes the row to `metrics.json`. NFE is
the number of network evaluations per sample. An ancestral (DDPM) cell is also a latent-variable
model, so the stage computes its variational bound (DDPM eq. 5) on the held-out reference split,
on the cell's own chain (the respaced one for fewer steps). Speed is timed apart, over short
repeats (pipelines/stages/timing.py), into `timing.json`: the samples' bytes never change between runs.
`run_cell` is shared with `sample_exact`, `sample_guided` and `sample_ddgan`: a cell with a
guidance `scale` draws one target label per sample (seed `guidance.label_seed`) and guides each
batch towards its labels; the labels are saved with the samples. An inpaint condition completes reference image i
in sample i (its pixels outside the mask known, imposed by the condition's rule), is scored on the source labels
(`inpaint_accuracy`, by the evaluator) and pixels (`inpaint_mse`), and saves the labels and the mask. Every network
runs through the params runtime's forward wrapper (`components.networks.runtime.forward_fn`); the model comes as its
output kind's adapter (`diffusion.ReverseModel`, DDGAN's `samplers.GANGenerator`), so nothing here asks how to read
it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from components.data.datasets import DATASETS
from components.data.dataset import Dataset, to_data
from components.math.diffusion import ReverseModel
from components.data.gaussian_mixture import bump_conditional, delta_conditional
from components.sampling.guidance import Classifier, Known, classifier_grad, gaussian_factor, inpaint_mask
from components.math.likelihood import bound_per_dim, null_log_likelihood_bits, variational_bound
from components.scoring.features import Extractor, to_uint8
from components.scoring.metrics import ReferenceSet, conditional_metrics, label_accuracy, masked_mse, sample_metrics
from components.networks.mlp import make_classifier, make_generator, make_network
from components.sampling.registry import SAMPLERS
from components.networks.runtime import Runtime, describe, forward_fn, generator
from components.sampling.samplers import GANGenerator, sample_ddgan
from components.math.schedules import Schedule, make_schedule, make_trajectory, respace
from pipelines.plumbing.atomic import atomic_save_figure, atomic_save_npz, atomic_write_json
from pipelines.plumbing.entry import checkpoint_path, dvc_stage, entry_point, progress_enabled, stage_args
from pipelines.plumbing.errors import first_line, InputError, NonFiniteError
from pipelines.plumbing.loading import load_checkpoint, load_dataset, load_reference_stats
from pipelines.params import Params, load_params
from pipelines.params.cells import CellParams, ConditionParams
from pipelines.plots.samples import inpaint_figure, samples_figure
from pipelines.plumbing.runtime import stage_runtime
from pipelines.stages.timing import time_draws
from pipelines.plumbing.tracking_spool import StageRun, log_stage_run


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


def output_kind(cfg: dict) -> str:
    """How a checkpoint's network output is read (`diffusion.OUTPUT_KINDS`): its config's "output", "eps" unless
    it says otherwise (train_sd2015 writes "sd2015")."""
    return cfg.get("output", "eps")


def load_ema_model(ckpt_path: str) -> tuple[ReverseModel, dict]:
    """The reverse process of a diffusion checkpoint (train_ddpm, finetune_iddpm, train_sd2015): its network with
    the EMA weights, read as the checkpoint's output kind, and the checkpoint's config."""
    def build(cfg):
        net_cfg = dict(cfg["network"])
        return make_network(net_cfg.pop("name"), tuple(cfg["data_shape"]), **net_cfg)
    net, cfg = _load_ema(ckpt_path, build)
    try:
        return ReverseModel(net, output_kind(cfg)), cfg
    except ValueError as e:
        raise InputError(f"{ckpt_path}: {first_line(e)}") from None


def load_ema_classifier(ckpt_path: str) -> tuple[torch.nn.Module, dict]:
    """p_phi(y | x_t, t) (train_classifier) with its EMA weights, and the checkpoint's config."""
    def build(cfg):
        net_cfg = dict(cfg["network"])
        return make_classifier(net_cfg.pop("name"), tuple(cfg["data_shape"]), cfg["n_classes"], **net_cfg)
    return _load_ema(ckpt_path, build)


def load_ema_generator(ckpt_path: str) -> tuple[GANGenerator, dict]:
    """DDGAN's G(x_t, t, z) (train_ddgan) with its EMA weights and latent size, and the checkpoint's config."""
    def build(cfg):
        net_cfg = dict(cfg["generator"])
        return make_generator(net_cfg.pop("name"), tuple(cfg["data_shape"]), **net_cfg)
    G, cfg = _load_ema(ckpt_path, build)
    return GANGenerator(G, G.nz), cfg


def check_cell_model(cell_key: str, cell: CellParams, ckpt_path: str, cfg: dict, ref_path: str, ref: Dataset) -> None:
    """The checkpoint can run this cell on this reference split; InputError naming the file otherwise."""
    T = cfg["diffusion"]["T"]
    if cell.steps > T:
        raise InputError(f"{ckpt_path}: trained with T={T}, but {cell_key}.steps = {cell.steps}")
    if cell.variance == "learned" and cfg["network"].get("out_mult", 1) != 2:
        raise InputError(f"{ckpt_path}: {cell_key}.variance 'learned' needs a model with a variance output")
    if output_kind(cfg) == "sd2015" and (cell.sampler, cell.steps, cell.variance) != ("ddpm", T, "learned"):
        raise InputError(f"{ckpt_path}: Sohl-Dickstein et al. 2015's kernel; {cell_key} needs sampler ddpm, steps {T} "
                         f"and variance learned")
    if (ref.shift, ref.scale) != (cfg["data"]["shift"], cfg["data"]["scale"]):
        raise InputError(f"{ref_path}: its model-space map differs from the one {ckpt_path} was trained with")


def draw(sampler, model, sched, n: int, batch_size: int, shape: tuple[int, ...], generator, kwargs, progress,
         per_batch=None) -> torch.Tensor:
    """Exactly n samples (no rounding down), in batches, all noise from `generator`, on its device; returned on the CPU.

    per_batch(batch) -> the sampler's keyword arguments that belong to the samples in slice `batch` (a guided cell's
    gradient function for their targets, an inpaint cell's known pixels of their sources), if any.
    """
    out = []
    for start in range(0, n, batch_size):
        batch = slice(start, min(start + batch_size, n))
        x_T = torch.randn((batch.stop - start, *shape), generator=generator, device=generator.device)
        extra = {} if per_batch is None else per_batch(batch)
        out.append(sampler(model, sched, x_T, generator=generator, progress=progress, **kwargs, **extra).cpu())
    return torch.cat(out)


def on_device(model: ReverseModel | GANGenerator, rt: Runtime) -> ReverseModel | GANGenerator:
    """The model with its network moved to rt.device and called through the runtime (`forward_fn`: channels_last,
    compile, bf16); a plain function (the mixture's exact eps*) is left as it is."""
    if not isinstance(model.net, torch.nn.Module):
        return model
    return dataclasses.replace(model, net=forward_fn(model.net.to(rt.device), rt, sampling=True))


def classifier_on_device(classifier: Classifier | None, rt: Runtime) -> Classifier | None:
    """A noise-aware classifier network on rt.device through the runtime (`forward_fn`; differentiated by guidance,
    so no CUDA graphs); the exact p(y | x_t), a plain function, or None as they are."""
    if not isinstance(classifier, torch.nn.Module):
        return classifier
    return forward_fn(classifier.to(rt.device), rt)


def target_labels(n: int, n_classes: int, seed: int) -> torch.Tensor:
    """Guided cells' targets: y ~ U{0..K-1}, one per sample, from their own seed (the sampler's noise stream is untouched)."""
    return torch.randint(n_classes, (n,), generator=torch.Generator(device="cpu").manual_seed(seed), device="cpu")


def guide_for(classifier: Classifier | None, y: torch.Tensor, scale: float | None,
              device: torch.device = torch.device("cpu")):
    """draw's per-batch keyword arguments for targets y at scale s, {"guidance": s grad log p(y[batch] | x_t)}; None
    when unguided or s = 0, which then runs the unguided sampler itself: its samples are the unguided cell's, bit
    for bit, and it costs no classifier pass."""
    if not scale:
        return None
    if classifier is None:
        raise ValueError(f"a cell guided at scale {scale:g} needs a classifier")
    y = y.to(device)
    return lambda batch: {"guidance": classifier_grad(classifier, y[batch], scale)}


def bound(model: ReverseModel, sched: Schedule, cell: CellParams, ref: Dataset,
          params: Params) -> dict[str, np.ndarray]:
    """The cell's variational bound on the first nll.n reference points: mean and standard error per dimension in the
    data set's unit, per-term means, and Sohl-Dickstein et al. 2015's K in bits per sample in model space (unit
    variance), with K - L_null, L_null the points' log-likelihood under N(0, I) (their Table 1)."""
    nll, decoder = params.nll, DATASETS[params.data.name].decoder
    device = stage_runtime(params).device
    x0 = torch.from_numpy(ref.to_model(ref.x[: nll.n])).to(device)  # (n, ...) model space
    dims = math.prod(x0.shape[1:])
    generator = torch.Generator(device).manual_seed(nll.seed)
    per_dim, terms, prior, total = [], [], [], []
    for start in range(0, len(x0), nll.batch_size):
        out = variational_bound(model, sched, x0[start:start + nll.batch_size], variance=cell.sampler_kwargs()["variance"],
                                generator=generator, decoder=decoder, clip_x0=cell.clip_x0)
        out = {k: v.cpu() for k, v in out.items()}
        per_dim.append(bound_per_dim(out["total"], dims, decoder, ref.scale))
        terms.append(out["terms"].sum(1) / dims)  # (S,) nats/dim, model space, summed over the batch
        prior.append(out["prior"].sum() / dims)
        total.append(out["total"])
    per_dim = torch.cat(per_dim)
    k_bits = -float(torch.cat(total).mean()) / math.log(2)
    x0 = x0.cpu()
    return {"nll": np.float64(per_dim.mean()), "nll_se": np.float64(per_dim.std() / math.sqrt(len(per_dim))),
            "nll_terms": (torch.stack(terms).sum(0) / len(x0)).numpy(), "nll_prior": np.float64(sum(prior) / len(x0)),
            "k_bits": np.float64(k_bits), "k_minus_null_bits": np.float64(k_bits - null_log_likelihood_bits(x0))}



@dataclass(frozen=True)
class CellFiles:
    """A sample stage's paths: what it reads, then what it writes, each output `<folder>/<cell>.<suffix>` in the
    folders dvc.yaml's cmd names (its outs: samples/${key}.npz, plots/samples/${key}.png, metrics/cells/${key}.json,
    metrics/timing/${key}.json)."""

    ARGS: ClassVar[tuple[str, ...]] = ("reference.npz", "reference_stats.npz", "samples/", "plots/", "cells/",
                                       "timing/")
    reference: str  # the held-out split (data/reference.npz)
    stats: str  # its features, k-NN radii and Gaussian fit (stage `reference`)
    samples: str
    scatter: str
    metrics: str  # the cell's row of the table: NFE, quality, coverage, likelihood
    timing: str  # its speed, apart: the only output that differs between two runs

    @classmethod
    def of(cls, cell: str, reference: str, stats: str, samples: str, plots: str, cells: str, timing: str) -> "CellFiles":
        """Cell `cell`'s files, from the stage's arguments (CellFiles.ARGS)."""
        return cls(reference, stats, *(str(Path(folder, f"{cell}{suffix}")) for folder, suffix in
                                       ((samples, ".npz"), (plots, ".png"), (cells, ".json"), (timing, ".json"))))


def score(x: np.ndarray, ref: Dataset, reference: ReferenceSet, params: Params, y: np.ndarray | None,
          condition: ConditionParams | None = None, extractor: Extractor | None = None) -> dict[str, float]:
    """The cell's quality and coverage against the reference split, in data units, with the data set's own measures
    (a mixture's modes, the swiss roll's curve); guided cells add the target-hit rate (judged by the evaluator on
    images, by the nearest mode on a mixture), conditioned cells on a mixture the share at the exact conditional's
    modes and the distance of their weights from its, inpaint cells their scores against their sources
    (`inpaint_scores`)."""
    e = params.evaluate
    embedded = (extractor or reference.extractor()).embed(x)  # once: the row's metrics and an inpaint cell's scores
    out = sample_metrics(x, reference, modes=ref.modes, mode_std=ref.mode_std, n_std=e.n_std,
                         min_count=e.min_mode_count, kid_subsets=e.kid_subsets, kid_subset_size=e.kid_subset_size,
                         targets=y, embedded=embedded)
    if condition is not None and condition.factor == "inpaint":
        out |= inpaint_scores(x, embedded[1], ref, hidden_pixels(condition, x.shape[1:]),
                              DATASETS[params.data.name].n_classes)
    measures = DATASETS[params.data.name].measures
    if measures is not None:
        out |= measures(x, params.data.std, e.n_std, e.min_mode_count)
    if condition is not None and ref.modes is not None:
        exact = (delta_conditional(ref.modes, ref.mode_std, condition.coordinate, condition.value)
                 if condition.factor == "delta" else
                 bump_conditional(ref.modes, ref.mode_std, np.asarray(condition.center), condition.std))
        out |= conditional_metrics(x, *exact, n_std=e.n_std)
    return out


def inpaint_scores(x: np.ndarray, logits: torch.Tensor | None, ref: Dataset, hidden: np.ndarray,
                   n_classes: int) -> dict[str, float]:
    """An inpaint cell's completions x (N, C, H, W, uint8) of the first N reference images: `inpaint_mse`, the mean
    squared error of their sampled pixels (`hidden`, (C, H, W)) against the sources', in model space ([-1, 1]
    pixels); and `inpaint_accuracy`, the share the evaluator labels as their source (ref.y[:N]), from its logits
    (N, G, K), where its labels are the data set's (K^G = n_classes: digits, not Inception's ImageNet classes)."""
    source = ref.x[: len(x)]
    out = {"inpaint_mse": masked_mse(ref.to_model(x), ref.to_model(source), hidden)}
    if logits is not None and logits.shape[-1] ** logits.shape[1] == n_classes:
        out["inpaint_accuracy"] = label_accuracy(logits, ref.y[: len(x)])
    return out


def hidden_pixels(condition: ConditionParams, shape: tuple[int, ...]) -> np.ndarray:
    """An inpaint condition's sampled pixels in images of `shape` (C, H, W), bool (`guidance.inpaint_mask`)."""
    return inpaint_mask(condition.mask, tuple(shape), condition.size).numpy()


def check_condition(cell_key: str, condition: ConditionParams | None, n: int, ref_path: str, ref: Dataset) -> None:
    """The reference split can condition the cell: an inpaint cell needs images, and one source image per sample;
    InputError naming the file otherwise (before any compute)."""
    if condition is None or condition.factor != "inpaint":
        return
    if ref.x.ndim != 4:
        raise InputError(f"{ref_path}: {cell_key}.condition inpaints images; the split holds points {ref.x.shape}")
    if n > len(ref.x):
        raise InputError(f"{ref_path}: {cell_key} draws {n} samples, one per source image; the split holds "
                         f"{len(ref.x)}")


def factor(condition: ConditionParams | None, ref: Dataset, shape: tuple[int, ...],
           device: torch.device = torch.device("cpu")):
    """A condition (data units) as draw's per-batch sampler keyword arguments in model space (`draw`'s per_batch):
    `known` for a delta on a coordinate, the same for every batch, or, for inpainting, sample i's pixels outside
    the mask from reference image i (i modulo the split's size, so timing runs of any n draw too) with the
    condition's rule; `guidance` = grad log r for a Gaussian bump (Sohl-Dickstein et al. 2015 §2.5). None without
    a condition."""
    if condition is None:
        return None
    if condition.factor == "inpaint":
        known = ~inpaint_mask(condition.mask, shape, condition.size).to(device)

        def sources(batch: slice) -> dict:
            x0 = ref.to_model(ref.x[np.arange(batch.start, batch.stop) % len(ref.x)])
            return {"known": Known(known, torch.from_numpy(x0).to(device), condition.rule)}
        return sources
    if condition.factor == "delta":
        mask = torch.zeros(math.prod(shape), dtype=torch.bool, device=device)
        mask[condition.coordinate] = True
        values = torch.full((math.prod(shape),), (condition.value - ref.shift) * ref.scale, device=device)
        kwargs = {"known": Known(mask.reshape(shape).to(device), values.reshape(shape).to(device))}
    else:
        center = (torch.tensor(condition.center, dtype=torch.float64, device=device) - ref.shift) * ref.scale
        kwargs = {"guidance": gaussian_factor(center.reshape(shape).to(device), condition.std * ref.scale)}
    return lambda batch: kwargs


def as_samples(x: torch.Tensor, ref: Dataset) -> np.ndarray:
    """Samples in data units, as the data set holds them: floats for points, uint8 pixels for images (rounded and
    clipped to [0, 255], what an image file would hold, which is what the metrics score)."""
    x_data = to_data(x.numpy(), ref.shift, ref.scale)
    return to_uint8(x_data).numpy() if ref.x.dtype == np.uint8 else x_data


@dataclass(frozen=True)
class CellRun:
    """One table row to draw: the stage, the cell, and what samples it on the model's full schedule."""

    stage: str  # e.g. sample@ddpm-100, for logs and MLflow
    name: str
    cell: CellParams
    model: ReverseModel | GANGenerator
    full: Schedule  # the model's training chain; the cell respaces it
    shape: tuple[int, ...]  # one sample's
    classifier: Classifier | None = None  # guided cells: p(y | x_t, t) over n_classes
    n_classes: int | None = None

    @property
    def guided(self) -> bool:
        return self.cell.scale is not None


def cell_sampler(run: CellRun, sched: Schedule, ref: Dataset, rt: Runtime):
    """The cell's sampler as draw_cell(n, batch_size, seed, label_seed, progress) -> (samples (n, ...) on the CPU,
    targets (n,) or None): noise from `seed`, a guided cell's targets from `label_seed`, the condition's factor in."""
    sampler, kwargs = CELL_SAMPLERS[run.cell.sampler], run.cell.sampler_kwargs()
    condition = factor(run.cell.condition, ref, run.shape, rt.device)  # a cell has a condition or a guidance scale

    def draw_cell(n: int, batch_size: int, seed: int, label_seed: int | None, progress: bool):
        y = target_labels(n, run.n_classes, label_seed) if run.guided else None
        per_batch = guide_for(run.classifier, y, run.cell.scale, rt.device) if run.guided else condition
        return draw(sampler, run.model, sched, n, batch_size, run.shape, generator(rt, seed), kwargs, progress,
                    per_batch), y

    return draw_cell


def check_finite(stage: str, x: torch.Tensor) -> None:
    """NonFiniteError where any sample has a NaN or inf: the sampler diverged, and nothing is written."""
    bad = int((~torch.isfinite(x)).any(dim=tuple(range(1, x.dim()))).sum())
    if bad:
        raise NonFiniteError(f"{stage}: {bad} of {len(x)} samples are non-finite: the sampler diverged; nothing written")


def write_cell(run: CellRun, files: CellFiles, x_data: np.ndarray, y: np.ndarray | None, nfe: int,
               likelihood: dict, row: dict, timing: dict, ref: Dataset) -> None:
    """The cell's samples (with NFE, bound and targets; an inpaint cell's source labels `source_y` and sampled pixels
    `mask`), plot (an inpaint cell's: sources, masked inputs, completions), row and timing, each written atomically."""
    condition = run.cell.condition
    targets = {"y": y, "scale": np.float64(run.cell.scale)} if run.guided else {}
    hidden = hidden_pixels(condition, x_data.shape[1:]) if condition and condition.factor == "inpaint" else None
    sources = {} if hidden is None else {"source_y": ref.y[: len(x_data)], "mask": hidden}
    atomic_save_npz(files.samples, x=x_data, nfe=np.int64(nfe), **likelihood, **targets, **sources)
    title = (f"{run.name}: NFE {nfe}" + (f", guidance s = {run.cell.scale:g} (colour: target)" if run.guided else "")
             + (f", times r: {condition.describe()}" if condition else ""))
    atomic_save_figure(files.scatter, samples_figure(x_data, title, labels=y) if hidden is None else
                       inpaint_figure(ref.x[: len(x_data)], hidden, x_data, title))
    atomic_write_json(files.metrics, row)
    atomic_write_json(files.timing, timing)


def log_cell(run: CellRun, params: Params, n: int, row: dict, timing: dict, files: CellFiles, extractor: str) -> None:
    """One line to stdout, and the cell's params, row, timing and scatter plot to MLflow."""
    t, condition = params.timing, run.cell.condition
    print(f"{run.stage}: {n} samples, " + ", ".join(f"{k} {v:.4g}" if not isinstance(v, str) else f"{k} {v}"
                                                    for k, v in row.items())
          + f"; {timing['wall_s_per_1k']:.4f} s per 1k (IQR {timing['wall_s_per_1k_iqr']:.4f}, "
          f"{t.repeats} x {t.n} samples, {timing['threads']} threads, {timing['runtime']})")
    numbers = {k: v for k, v in timing.items() if isinstance(v, (int, float))}
    log_stage_run(StageRun(
        run.stage, params={"cell": dataclasses.asdict(run.cell), "sample": dataclasses.asdict(params.sample),
                           "timing": dataclasses.asdict(t),
                           **({"guidance": dataclasses.asdict(params.guidance)} if run.guided else {}),
                           **({"condition": dataclasses.asdict(condition)} if condition else {})},
        metrics={**{k: v for k, v in row.items() if not isinstance(v, str)},
                 **{f"timing.{k}": v for k, v in numbers.items()}}, artifacts=[Path(files.scatter)],
        tags={"cell": run.name, "timing.device": timing["device"], "extractor": extractor,
              "runtime": timing["runtime"]},
    ))


def run_cell(run: CellRun, ref: Dataset, params: Params, files: CellFiles) -> None:
    """Sample the cell, score it, compute its bound if it has one, time it; write each output, log to MLflow.

    A guided cell needs the run's classifier (logits over n_classes) and draws its targets; a cell with a
    condition multiplies its factor in. Networks run on params runtime's device; the samples' bytes are the
    same from run to run on one device.
    """
    p, e, t, rt = params.sample, params.evaluate, params.timing, stage_runtime(params)
    check_condition(run.name, run.cell.condition, run.cell.n or p.n, files.reference, ref)
    reference = load_reference_stats(files.stats, e.features, e.k)  # a bad file fails here, before any compute
    extractor = reference.extractor(rt.device)
    sched = respace(run.full, make_trajectory(run.cell.trajectory, len(run.full), run.cell.steps))
    run = dataclasses.replace(run, model=on_device(run.model, rt), classifier=classifier_on_device(run.classifier, rt))
    draw_cell, n = cell_sampler(run, sched, ref, rt), run.cell.n or p.n
    label_seed = params.guidance.label_seed if run.guided else None  # read only where used (dvc.yaml's params)
    x, y = draw_cell(n, p.batch_size, p.seed, label_seed, progress_enabled())
    check_finite(run.stage, x)
    likelihood = bound(run.model, sched, run.cell, ref, params) if run.cell.has_likelihood else {}

    x_data, y_np, nfe = as_samples(x, ref), None if y is None else y.numpy(), len(sched)  # one network call a step
    named = {} if extractor.name == "identity" else {"extractor": extractor.name}  # points: the table says identity
    row = {"nfe": nfe, **named, **score(x_data, ref, reference, params, y_np, run.cell.condition, extractor),
           **{k: float(likelihood[k]) for k in ("nll", "nll_se", "k_bits", "k_minus_null_bits") if k in likelihood}}
    timing = time_draws(lambda n, seed: draw_cell(n, n, seed, seed, False)[0], n=t.n, repeats=t.repeats,
                        warmup=t.warmup, threads=t.threads, device=rt.device)
    timing["runtime"] = describe(rt)
    write_cell(run, files, x_data, y_np, nfe, likelihood, row, timing, ref)
    log_cell(run, params, n, row, timing, files, extractor.name)


def main(argv: list[str]) -> None:
    models_dir, *paths = stage_args(argv, ("models/", *CellFiles.ARGS))
    stage, item = dvc_stage("sample")
    params = load_params()
    cell_name, cell = params.cell("sweep", item)
    files = CellFiles.of(cell_name, *paths)
    ckpt_path = checkpoint_path(models_dir, cell.model)
    model, cfg = load_ema_model(ckpt_path)  # its config fixes the schedule, T and model space
    ref = load_dataset(files.reference, params.data.name)
    check_cell_model(f"sweep.{cell_name}", cell, ckpt_path, cfg, files.reference, ref)
    full = make_schedule(cfg["diffusion"]["schedule"], cfg["diffusion"]["T"])
    run_cell(CellRun(stage if item is None else f"{stage}@{item}", cell_name, cell, model, full,
                     tuple(cfg["data_shape"])), ref, params, files)


if __name__ == "__main__":
    entry_point(main)
