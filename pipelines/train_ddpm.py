"""Stage `train_ddpm`: train eps_theta on L_simple (DDPM Algorithm 1) with Adam, LR schedule and EMA.

    python -m pipelines.train_ddpm <train.npz> <checkpoint.pt> <loss.csv> <loss.png>

A resume checkpoint `<checkpoint.pt>.partial` is written every `checkpoint_every` steps; a
killed run picks it up (if its config matches) and finishes bit-for-bit as an unbroken run would.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from components.networks import make_network
from components.schedules import make_schedule
from components.training import CHECKPOINT_KEYS, TrainState, checkpoint, lr_at, restore, train_step
from pipelines.io import (
    atomic_save_figure, atomic_torch_save, atomic_write_text, entry_point, load_checkpoint, load_dataset,
    progress_enabled, stage_args,
)
from pipelines.plots import loss_curve_figure
from pipelines.params import load_params
from pipelines.tracking import StageRun, log_stage_run


def main(argv: list[str]) -> None:
    data_path, ckpt_path, csv_path, png_path = stage_args(argv, ("train.npz", "checkpoint.pt", "loss.csv", "loss.png"))
    params = load_params()
    p, diff = params.train_ddpm, params.diffusion
    ds = load_dataset(data_path)
    data = torch.from_numpy(ds.to_model(ds.x))  # (N, ...) model space
    config = {
        "network": {"name": p.network.name, **p.network.kwargs},
        "data_shape": list(data.shape[1:]),
        "diffusion": dataclasses.asdict(diff),
        "data": {"shift": ds.shift, "scale": ds.scale, "sha256": hashlib.sha256(ds.x.tobytes()).hexdigest()},
        "train": {k: v for k, v in dataclasses.asdict(p).items() if k != "network"},
    }
    sched = make_schedule(diff.schedule, diff.T)
    torch.manual_seed(p.seed)  # network initialisation
    net = make_network(p.network.name, tuple(data.shape[1:]), **p.network.kwargs)
    state = TrainState.create(net, p.lr, p.seed)
    history: dict[str, list[float]] = {"step": [], "loss": [], "lr": []}

    partial = Path(f"{ckpt_path}.partial")
    if partial.exists():
        ckpt = load_checkpoint(partial, CHECKPOINT_KEYS)
        if ckpt["config"] == config:
            history = restore(state, ckpt)
            print(f"train_ddpm: resuming from {partial} at step {state.step}")
        else:
            print(f"train_ddpm: {partial} was made with other params or data; starting afresh")

    window: list[float] = []
    start_step, t0 = state.step, time.perf_counter()
    with tqdm(total=p.steps, initial=state.step, disable=not progress_enabled(), desc="train_ddpm",
              unit="step") as bar:
        while state.step < p.steps:
            lr = lr_at(state.step, lr=p.lr, warmup_steps=p.warmup_steps, total_steps=p.steps, schedule=p.lr_schedule)
            m = train_step(state, sched, data, batch_size=p.batch_size, lr=lr, grad_clip=p.grad_clip,
                           ema_decay=p.ema_decay)
            window.append(m["loss"])
            bar.update()
            if state.step % p.log_every == 0 or state.step == p.steps:
                history["step"].append(state.step)
                history["loss"].append(float(np.mean(window)))
                history["lr"].append(lr)
                window = []
                bar.set_postfix(loss=f"{history['loss'][-1]:.4f}", lr=f"{lr:.2e}")
            if state.step % p.checkpoint_every == 0 and state.step < p.steps:
                atomic_torch_save(partial, checkpoint(state, config, history))

    train_s = time.perf_counter() - t0
    steps_per_s = (state.step - start_step) / max(train_s, 1e-9)
    atomic_torch_save(ckpt_path, checkpoint(state, config, history))
    rows = "\n".join(f"{s},{l:.6f},{r:.6g}" for s, l, r in zip(history["step"], history["loss"], history["lr"]))
    atomic_write_text(csv_path, "step,loss,lr\n" + rows + "\n")
    atomic_save_figure(png_path, loss_curve_figure(history["step"], history["loss"], "train_ddpm: L_simple, mean per log_every steps"))
    partial.unlink(missing_ok=True)
    n_params = sum(x.numel() for x in net.parameters())
    print(f"train_ddpm: {p.steps} steps, final loss {history['loss'][-1]:.4f}, {n_params} parameters, "
          f"{train_s:.1f} s in this run ({steps_per_s:.1f} steps/s)")
    log_stage_run(StageRun(
        "train_ddpm", params={"diffusion": dataclasses.asdict(diff), "train_ddpm": dataclasses.asdict(p)},
        metrics={"final_loss": history["loss"][-1], "n_params": n_params, "train_s": train_s, "steps_per_s": steps_per_s},
        series={"loss": list(zip(history["step"], history["loss"])), "lr": list(zip(history["step"], history["lr"]))},
        artifacts=[Path(csv_path), Path(png_path)],
    ))


if __name__ == "__main__":
    entry_point(main)
