"""Stage `train_ddpm`: train eps_theta on L_simple (DDPM Algorithm 1) with Adam, LR schedule and EMA.

    python -m pipelines.stages.train_ddpm <train.npz> <checkpoint.pt> <loss.csv> <loss.png>

A resume checkpoint `<checkpoint.pt>.partial` is written every `checkpoint_every` steps and after
the last; a killed run picks it up (if its config matches) and finishes byte for byte as an
unbroken run would. It is removed once the outputs are written and logged. With params runtime.processes N > 1
the stage trains as N torchrun ranks, each on 1/N of every batch (pipelines/plumbing/distributed.py).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from components.networks.mlp import make_network
from components.networks.runtime import describe
from components.math.schedules import make_schedule
from components.training.state import TrainState
from components.training.steps import train_step
from pipelines.plumbing.distributed import stage_replicas
from pipelines.plumbing.entry import entry_point, stage_args
from pipelines.plumbing.loading import load_dataset
from pipelines.params import load_params
from pipelines.plumbing.runtime import stage_runtime
from pipelines.plumbing.tracking_spool import StageRun, log_stage_run
from pipelines.stages.trainer import TrainRun, scratch_config, write_history


def main(argv: list[str]) -> None:
    data_path, ckpt_path, csv_path, png_path = stage_args(argv, ("train.npz", "checkpoint.pt", "loss.csv", "loss.png"))
    params = load_params()
    p, diff = params.train_ddpm, params.diffusion
    ds = load_dataset(data_path, params.data.name)
    rt = stage_runtime(params)
    data = torch.from_numpy(ds.to_model(ds.x)).to(rt.device)  # (N, ...) model space; minibatches are drawn there
    config = scratch_config(p, dataclasses.asdict(diff), ds, hflip=params.data.hflip, device=rt.device.type)
    sched = make_schedule(diff.schedule, diff.T)
    torch.manual_seed(p.seed)  # network initialisation
    net = make_network(p.network.name, tuple(data.shape[1:]), **p.network.kwargs)
    state = TrainState.create(net, p.lr, p.seed, rt=rt, replicas=stage_replicas())
    run = TrainRun("train_ddpm", state, config, ckpt_path)
    history = run.history
    train_s, steps_per_s = run.train(
        p, lambda lr: train_step(state, sched, data, batch_size=p.batch_size, lr=lr, grad_clip=p.grad_clip,
                                 ema_decay=p.ema_decay, hflip=params.data.hflip))
    if not run.leader:
        return  # rank 0 writes the outputs

    run.save(ckpt_path)
    write_history(csv_path, png_path, history, "train_ddpm: L_simple, mean per log_every steps")
    n_params = sum(x.numel() for x in net.parameters())
    print(f"train_ddpm: {p.steps} steps, final loss {history['loss'][-1]:.4f}, {n_params} parameters, "
          f"{train_s:.1f} s in this run ({steps_per_s:.1f} steps/s, {steps_per_s * p.batch_size:.0f} images/s; "
          f"{describe(rt)})")
    log_stage_run(StageRun(
        "train_ddpm", params={"diffusion": dataclasses.asdict(diff), "train_ddpm": dataclasses.asdict(p)},
        metrics={"final_loss": history["loss"][-1], "n_params": n_params, "train_s": train_s,
                 "steps_per_s": steps_per_s, "images_per_s": steps_per_s * p.batch_size},
        tags={"runtime": describe(rt)},
        series={"loss": list(zip(history["step"], history["loss"])), "lr": list(zip(history["step"], history["lr"]))},
        artifacts=[Path(csv_path), Path(png_path)],
    ))
    run.finish()


if __name__ == "__main__":
    entry_point(main, checkpoint=lambda argv: argv[1])
