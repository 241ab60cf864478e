"""Stage `train_sd2015`: Sohl-Dickstein et al. 2015's diffusion model, trained on the full bound K (eq. 14).

    python -m pipelines.stages.train_sd2015 <train.npz> <checkpoint.pt> <loss.csv> <loss.png>

The reverse kernel has a learned mean and a learned diagonal variance, both perturbations of the forward
kernel (eqs. 64-65; `diffusion.sd2015_mean_variance`): the network outputs (z_mu, z_Sigma), 2C channels,
recorded in the checkpoint as output "sd2015". The loss is T L_t at per-example t, L_t the closed-form
posterior KL in bits per dimension, with gradients through mean and variance (`training.bound_train_step`).
On the main data set it uses params diffusion's schedule and T, the DDPM model's chain, so its row compares
parameterisation and objective alone (DDPM Table 2); the profile `swissroll` (profiles/swissroll.yaml) trains it on
the swiss roll at the paper's T = 40 with its own schedule. Resume works as in train_ddpm, importance-sampler history included.
Several torchrun ranks (params runtime.processes) train as in train_ddpm.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from components.data.datasets import DATASETS
from components.networks.mlp import make_network
from components.math.schedules import make_schedule
from components.training.parallel import Replicas
from components.training.state import TrainState
from components.training.steps import UniformTimesteps, bound_train_step, make_timestep_sampler
from pipelines.plumbing.distributed import stage_replicas
from pipelines.plumbing.entry import entry_point, stage_args
from pipelines.plumbing.loading import load_dataset
from components.networks.runtime import CPU, Runtime
from pipelines.params import load_params
from pipelines.params.training import SD2015Params
from pipelines.plumbing.runtime import stage_runtime
from pipelines.plumbing.tracking_spool import StageRun, log_stage_run
from pipelines.stages.trainer import TrainRun, scratch_config, write_history

OUTPUT = "sd2015"  # how the network's output is read (diffusion.reverse_kernel)


def new_state(p: SD2015Params, data_shape: tuple[int, ...], T: int, rt: Runtime | None = None,
              replicas: Replicas = Replicas()) -> tuple[TrainState, UniformTimesteps]:
    """A fresh run of params `p` (train_sd2015): the network seeded by `p.seed`, with 2C
    outputs (z_mu, z_Sigma), its optimiser and EMA, and the timestep sampler over T steps. Shared with
    benchmarks/sd2015_recipe.py. On rt's device (the CPU without one), as this rank of `replicas`."""
    torch.manual_seed(p.seed)  # network initialisation
    net = make_network(p.network.name, data_shape, **p.network.kwargs, out_mult=2)
    state = TrainState.create(net, p.lr, p.seed, rt=rt or CPU, replicas=replicas)
    return state, make_timestep_sampler(p.timestep_sampler, T, p.importance_history, p.importance_uniform)


def main(argv: list[str]) -> None:
    data_path, ckpt_path, csv_path, png_path = stage_args(argv, ("train.npz", "checkpoint.pt", "loss.csv", "loss.png"))
    params = load_params()
    p, diff = params.train_sd2015, params.diffusion
    stage = "train_sd2015"
    ds = load_dataset(data_path, params.data.name)
    rt = stage_runtime(params)
    data = torch.from_numpy(ds.to_model(ds.x)).to(rt.device)  # (N, ...) model space; minibatches are drawn there
    decoder = DATASETS[params.data.name].decoder
    config = scratch_config(p, dataclasses.asdict(diff), ds, output=OUTPUT,
                            objective={"loss": "vlb", "decoder": decoder}, device=rt.device.type)
    config["network"]["out_mult"] = 2  # z_mu and z_Sigma
    sched = make_schedule(diff.schedule, diff.T)
    state, timesteps = new_state(p, tuple(data.shape[1:]), len(sched), rt, stage_replicas())
    net = state.model
    run = TrainRun(stage, state, config, ckpt_path, extra={"timestep_sampler": timesteps})
    history = run.history
    train_s, steps_per_s = run.train(
        p, lambda lr: bound_train_step(state, sched, data, timesteps, batch_size=p.batch_size, output=OUTPUT,
                                       decoder=decoder, lr=lr, grad_clip=p.grad_clip, ema_decay=p.ema_decay))
    if not run.leader:
        return  # rank 0 writes the outputs

    run.save(ckpt_path)
    write_history(csv_path, png_path, history,
                  f"{stage}: T L_t (bits/dim), the bound's estimate, mean per log_every steps")
    n_params = sum(x.numel() for x in net.parameters())
    print(f"{stage}: {p.steps} steps on {params.data.name} (T = {diff.T}, {diff.schedule}), final T L_t "
          f"{history['loss'][-1]:.4f} bits/dim, {n_params} parameters, {train_s:.1f} s in this run "
          f"({steps_per_s:.1f} steps/s)")
    log_stage_run(StageRun(
        stage,
        params={"data": {"name": params.data.name}, "diffusion": dataclasses.asdict(diff),
                "train_sd2015": dataclasses.asdict(p)},
        metrics={"final_loss": history["loss"][-1], "n_params": n_params, "train_s": train_s,
                 "steps_per_s": steps_per_s},
        series={"loss": list(zip(history["step"], history["loss"])), "lr": list(zip(history["step"], history["lr"]))},
        artifacts=[Path(csv_path), Path(png_path)],
    ))
    run.finish()


if __name__ == "__main__":
    entry_point(main, checkpoint=lambda argv: argv[1])
