"""Stage `train_ddgan@<T>`: a Denoising Diffusion GAN with T denoising steps (Xiao, Kreis & Vahdat 2022).

    python -m pipelines.stages.train_ddgan <train.npz> <models/> <plots/>     # DVC_STAGE=train_ddgan@<T>

T is the stage's matrix item, read from DVC_STAGE (never from the command line); the stage writes
`<models>/ddgan-<T>.pt` and `<plots>/<T>/losses.csv|png`.

G(x_t, z, t) -> x0-hat and D(x_{t-1}, x_t, t) trained on T steps of params `train_ddgan.schedule`
(DDGAN's discretised VP): the non-saturating loss, lazy R1 on real pairs, Adam with separate
learning rates, the EMA of G (`components.training.ddgan.ddgan_train_step`), G and D run through params `runtime`
(precision, channels_last, compile) like every trainer's networks. The checkpoint holds G, D,
the EMA, both optimisers, the step and the RNG state; a `.partial` is written every
`checkpoint_every` steps and after the last; a killed run resumes from it, byte for byte. With params
runtime.processes N > 1 it trains as N torchrun ranks, each on 1/N of every batch (a minibatch-stddev feature of an
image D then sees a rank's share alone, as in DDGAN's multi-GPU training).

The losses are written per t, the paper's stability figure: `losses.csv` in long form (step, t,
term, value), t = 0..T-1 and `all`, terms d_loss, g_loss and r1 (a DVC plot coloured by t), and
a PNG with one panel per term.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch

from components.training.ddgan import ddgan_train_step
from components.networks.mlp import make_discriminator, make_generator
from components.networks.runtime import CPU, Runtime
from components.math.schedules import Schedule, make_schedule
from components.training.parallel import Replicas
from components.training.state import TrainState
from components.training.steps import lr_at
from pipelines.plumbing.atomic import atomic_save_figure, atomic_write_text
from pipelines.plumbing.distributed import stage_replicas
from pipelines.plumbing.entry import checkpoint_path, dvc_stage, entry_point, parse_T, stage_args
from pipelines.plumbing.loading import load_dataset
from pipelines.params import load_params
from pipelines.params.training import DDGANTrainParams
from pipelines.plumbing.runtime import stage_runtime
from pipelines.plots.training import losses_by_t_figure
from pipelines.plumbing.tracking_spool import StageRun, log_stage_run
from pipelines.stages.trainer import TrainRun, scratch_config

TERMS = ("d_loss", "g_loss", "r1")


def losses_by_t(history: dict[str, list], T: int) -> dict[str, dict[str, list[float]]]:
    """term -> {"all" or "t<i>": its logged series}, from the history's columns `term` and `term_t<i>`."""
    return {term: {"all": history[term], **{f"t{i}": history[f"{term}_t{i}"] for i in range(T)}} for term in TERMS}


def losses_csv(steps: list[int], by_t: dict[str, dict[str, list[float]]]) -> str:
    """Long form, one row per (step, t, term): the DVC plot colours lines by t."""
    rows = [f"{s},{t[1:] if t != 'all' else t},{term},{values[j]:.6f}"
            for term, series in by_t.items() for t, values in series.items() for j, s in enumerate(steps)]
    return "step,t,term,value\n" + "\n".join(rows) + "\n"


def loss_paths(plots_dir: str, T: int) -> tuple[str, str]:
    """train_ddgan@<T>'s losses per t, the CSV and the PNG (dvc.yaml: plots/train_ddgan/${item.T}/losses.*)."""
    return str(Path(plots_dir, str(T), "losses.csv")), str(Path(plots_dir, str(T), "losses.png"))


def new_state(p: DDGANTrainParams, data_shape: tuple[int, ...], seed: int, rt: Runtime = CPU,
              replicas: Replicas = Replicas()) -> TrainState:
    """G and D (initialised from `seed`), the EMA of G and their optimisers (Adam with each network's own learning
    rate; DDGAN's betas (0.5, 0.9)), as recipe `p` (params.yaml's train_ddgan) has them, on runtime `rt`, as this
    rank of `replicas`."""
    torch.manual_seed(seed)  # network initialisation
    G = make_generator(p.generator.name, data_shape, **p.generator.kwargs)
    D = make_discriminator(p.discriminator.name, data_shape, **p.discriminator.kwargs)
    return TrainState.create({"G": G, "D": D}, {"G": p.lr, "D": p.lr_d}, seed, rt=rt, betas=tuple(p.adam_betas),
                             replicas=replicas)


def recipe_step(state: TrainState, sched: Schedule, data: torch.Tensor, p: DDGANTrainParams) -> dict[str, float]:
    """One DDGAN iteration of recipe `p` at state.step: both learning rates on p's schedule over p.steps."""
    lr_g, lr_d = (lr_at(state.step, lr=lr, warmup_steps=p.warmup_steps, total_steps=p.steps, schedule=p.lr_schedule)
                  for lr in (p.lr, p.lr_d))
    return ddgan_train_step(state, sched, data, batch_size=p.batch_size, lr_g=lr_g, lr_d=lr_d, r1_gamma=p.r1_gamma,
                            r1_every=p.r1_every, ema_decay=p.ema_decay, grad_clip=p.grad_clip)


def main(argv: list[str]) -> None:
    data_path, models_dir, plots_dir = stage_args(argv, ("train.npz", "models/", "plots/"))
    params = load_params()
    T = parse_T(dvc_stage("train_ddgan")[1] or "")
    ckpt_path, csv_path, png_path = checkpoint_path(models_dir, f"ddgan-{T}"), *loss_paths(plots_dir, T)
    p = params.train_ddgan
    ds = load_dataset(data_path, params.data.name)
    rt = stage_runtime(params)
    data = torch.from_numpy(ds.to_model(ds.x)).to(rt.device)  # (N, ...) model space; minibatches are drawn there
    config = scratch_config(p, {"schedule": p.schedule, "T": T}, ds, device=rt.device.type)
    sched = make_schedule(p.schedule, T)
    state = new_state(p, tuple(data.shape[1:]), p.seed, rt, stage_replicas())
    stage = f"train_ddgan@{T}"
    run = TrainRun(stage, state, config, ckpt_path,
                   logged=(*TERMS, *(f"{k}_t{i}" for k in TERMS for i in range(T))))
    history = run.history

    def step(lr_g: float) -> dict[str, float]:  # train_loop's lr_g is the one recipe_step computes
        return recipe_step(state, sched, data, p)

    train_s, steps_per_s = run.train(p, step, finite=("d_loss", "g_loss"))
    if not run.leader:
        return  # rank 0 writes the outputs

    run.save(ckpt_path)
    by_t = losses_by_t(history, T)
    atomic_write_text(csv_path, losses_csv(history["step"], by_t))
    atomic_save_figure(png_path, losses_by_t_figure(history["step"], by_t, f"{stage}: DDGAN losses per t, "
                                                    f"mean per log_every steps"))
    n_g, n_d = (sum(x.numel() for x in state.nets[name].parameters()) for name in ("G", "D"))
    final = {k: history[k][-1] for k in TERMS}
    print(f"{stage}: {p.steps} steps, final D loss {final['d_loss']:.4f}, G loss {final['g_loss']:.4f}, "
          f"R1 {final['r1']:.4g}; G {n_g} and D {n_d} parameters, {train_s:.1f} s in this run ({steps_per_s:.1f} steps/s)")
    log_stage_run(StageRun(
        stage, params={"T": T, "train_ddgan": dataclasses.asdict(p)},
        metrics={**{f"final_{k}": v for k, v in final.items() if not math.isnan(v)}, "n_params_g": n_g,
                 "n_params_d": n_d, "train_s": train_s, "steps_per_s": steps_per_s},
        series={k: [(s, x) for s, x in zip(history["step"], v) if not math.isnan(x)] for k, v in history.items()
                if k != "step"},
        artifacts=[Path(csv_path), Path(png_path)], tags={"T": str(T)},
    ))
    run.finish()


def final_checkpoint(argv: list[str]) -> str:
    """train_ddgan@<T>'s checkpoint, `<models>/ddgan-<T>.pt`, from its argv and DVC_STAGE."""
    return checkpoint_path(stage_args(argv, ("train.npz", "models/", "plots/"))[1],
                           f"ddgan-{parse_T(dvc_stage('train_ddgan')[1] or '')}")


if __name__ == "__main__":
    entry_point(main, checkpoint=final_checkpoint)
