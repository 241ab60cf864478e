"""Stage `finetune_iddpm`: the DDPM model plus a learned variance, fine-tuned on L_hybrid (iDDPM §3.1).

    python -m pipelines.stages.finetune_iddpm <ddpm.pt> <train.npz> <iddpm.pt> <loss.csv> <loss.png>

The network of `ddpm.pt` is rebuilt with twice the output channels (eps, then v). Its EMA
weights are copied in and the v rows start at zero, so Sigma starts halfway (in log space)
between beta-tilde_t and beta_t. It then trains on L_hybrid = L_simple + lambda T L_t, with the
eps output detached inside L_t. The schedule is the DDPM model's own: the eps head was trained
on its noise levels, and keeping them makes the fixed- and learned-variance rows differ only in
Sigma. Resume works as in train_ddpm, importance-sampler history included, and so do several torchrun ranks
(params runtime.processes).
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import torch

from components.data.datasets import DATASETS
from components.math.diffusion import q_sample, split_output
from components.networks.mlp import add_variance_output, make_network
from components.math.schedules import make_schedule
from components.training.state import TrainState
from components.training.steps import hybrid_train_step, make_timestep_sampler
from pipelines.plumbing.distributed import stage_replicas
from pipelines.plumbing.entry import entry_point, stage_args
from pipelines.plumbing.errors import first_line, InputError
from pipelines.plumbing.loading import data_fingerprint, load_checkpoint, load_dataset
from pipelines.params import load_params
from pipelines.plumbing.runtime import stage_runtime
from pipelines.plumbing.tracking_spool import StageRun, log_stage_run
from pipelines.stages.trainer import TrainRun, write_history


FRAC_TIMESTEPS = (0, 1, 2, 5, 10, 20, 50, 100, 200, 300, 500, 700)  # and T - 1


@torch.no_grad()
def variance_fraction(model: torch.nn.Module, sched, x0: torch.Tensor, seed: int) -> dict[int, float]:
    """Mean frac = (v + 1)/2 at a few t (iDDPM eq. 15): where the learned Σ sits, 0 = beta-tilde, 1 = beta."""
    g = torch.Generator(device="cpu").manual_seed(seed)  # the same noise on every device: a diagnostic
    out = {}
    for t in sorted({t for t in FRAC_TIMESTEPS if t < len(sched)} | {len(sched) - 1}):
        tt = torch.full((len(x0),), t, device=x0.device)
        x_t = q_sample(sched, x0, tt, torch.randn(x0.shape, generator=g, device="cpu").to(x0.device))
        _, v = split_output(model(x_t, tt), x_t)
        out[t] = float((v + 1).mean() / 2)
    return out


def main(argv: list[str]) -> None:
    ddpm_path, data_path, ckpt_path, csv_path, png_path = stage_args(
        argv, ("ddpm.pt", "train.npz", "checkpoint.pt", "loss.csv", "loss.png"))
    params = load_params()
    p = params.finetune_iddpm
    ds = load_dataset(data_path, params.data.name)
    src = load_checkpoint(ddpm_path, ("ema", "config"))
    src_cfg = src["config"]
    if src_cfg["data"]["sha256"] != data_fingerprint(ds.x):
        raise InputError(f"{ddpm_path}: trained on other data than {data_path}; rerun train_ddpm first")
    if src_cfg["network"].get("out_mult", 1) != 1:
        raise InputError(f"{ddpm_path}: already has a variance output; expected an eps-only DDPM checkpoint")
    rt = stage_runtime(params)
    data = torch.from_numpy(ds.to_model(ds.x)).to(rt.device)  # (N, ...) model space; minibatches are drawn there
    decoder = DATASETS[params.data.name].decoder
    config = {
        "network": {**src_cfg["network"], "out_mult": 2},
        "data_shape": src_cfg["data_shape"],
        "diffusion": src_cfg["diffusion"],  # the DDPM model's own schedule (see the module docstring)
        "data": src_cfg["data"],
        "init": {"checkpoint_sha256": hashlib.sha256(Path(ddpm_path).read_bytes()).hexdigest()},
        "objective": {"loss": "hybrid", "decoder": decoder},
        "train": dataclasses.asdict(p),
        "hflip": params.data.hflip,
        "device": rt.device.type,
    }
    sched = make_schedule(src_cfg["diffusion"]["schedule"], src_cfg["diffusion"]["T"])
    net_kwargs = dict(config["network"])
    net = make_network(net_kwargs.pop("name"), tuple(config["data_shape"]), **net_kwargs)
    try:
        add_variance_output(src["ema"], net)
    except (ValueError, RuntimeError) as e:
        raise InputError(f"{ddpm_path}: EMA weights do not fit its network config ({first_line(e)})") from None
    state = TrainState.create(net, p.lr, p.seed, rt=rt, replicas=stage_replicas())
    timesteps = make_timestep_sampler(p.timestep_sampler, len(sched), p.importance_history, p.importance_uniform)
    run = TrainRun("finetune_iddpm", state, config, ckpt_path, logged=("loss", "l_simple", "l_vlb"),
                   extra={"timestep_sampler": timesteps})
    history = run.history
    train_s, steps_per_s = run.train(
        p, lambda lr: hybrid_train_step(state, sched, data, timesteps, batch_size=p.batch_size,
                                        lambda_vlb=p.lambda_vlb, decoder=decoder, lr=lr, grad_clip=p.grad_clip,
                                        ema_decay=p.ema_decay, hflip=params.data.hflip))
    if not run.leader:
        return  # rank 0 writes the outputs

    run.save(ckpt_path)
    write_history(csv_path, png_path, history,
                  f"finetune_iddpm: L_hybrid = L_simple + {p.lambda_vlb:g} T L_t (L_t in bits/dim), mean per log_every steps")
    last = {k: history[k][-1] for k in ("loss", "l_simple", "l_vlb")}
    frac = variance_fraction(state.ema, sched, data[:2000].to(rt.device), p.seed)
    print("finetune_iddpm: EMA frac = (v+1)/2 by t: " + ", ".join(f"{t}: {f:.3f}" for t, f in frac.items()))
    print(f"finetune_iddpm: {p.steps} steps from {ddpm_path}, final loss {last['loss']:.4f} "
          f"(L_simple {last['l_simple']:.4f}, T L_t {last['l_vlb']:.3f} bits/dim), "
          f"{train_s:.1f} s in this run ({steps_per_s:.1f} steps/s)")
    log_stage_run(StageRun(
        "finetune_iddpm", params={"finetune_iddpm": dataclasses.asdict(p), "decoder": decoder},
        metrics={f"final_{k}": v for k, v in last.items()} | {"train_s": train_s, "steps_per_s": steps_per_s},
        series={**{k: list(zip(history["step"], history[k])) for k in ("loss", "l_simple", "l_vlb", "lr")},
                "frac_by_t": list(frac.items())},
        artifacts=[Path(csv_path), Path(png_path)],
    ))
    run.finish()


if __name__ == "__main__":
    entry_point(main, checkpoint=lambda argv: argv[2])
