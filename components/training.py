"""The DDPM training step and its parts: L_simple, the learning-rate schedule, EMA, checkpoints.

The loop itself lives in the stage; here is `train_step(state, ...) -> metrics` and the pure
pieces it is made of. A checkpoint is a dict of tensors and plain values, loadable with
`torch.load(..., weights_only=True)`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from components.diffusion import model_timesteps, q_sample
from components.schedules import Schedule


def l_simple(model: nn.Module, sched: Schedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """DDPM eq. 14: L_simple = E ||eps - eps_theta(sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t)||^2."""
    eps_pred = model(q_sample(sched, x0, t, noise), model_timesteps(sched, t))
    return (eps_pred - noise).pow(2).mean()


def lr_at(step: int, *, lr: float, warmup_steps: int, total_steps: int, schedule: str) -> float:
    """Learning rate at `step`: linear warm-up, then constant or cosine decay to 0 at total_steps."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return lr * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


LR_SCHEDULES = ("constant", "cosine")


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """theta_ema <- decay * theta_ema + (1 - decay) * theta."""
    for p_ema, p in zip(ema.parameters(), model.parameters()):
        p_ema.lerp_(p, 1.0 - decay)


@dataclass
class TrainState:
    """Everything a run needs to resume exactly: weights, EMA, optimiser, step and RNG."""

    model: nn.Module
    ema: nn.Module
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    step: int = 0

    @classmethod
    def create(cls, model: nn.Module, lr: float, seed: int) -> "TrainState":
        ema = copy.deepcopy(model).requires_grad_(False)
        generator = torch.Generator().manual_seed(seed)
        return cls(model, ema, torch.optim.Adam(model.parameters(), lr=lr), generator)


def train_step(
    state: TrainState, sched: Schedule, data: torch.Tensor, *, batch_size: int, lr: float, grad_clip: float,
    ema_decay: float,
) -> dict[str, float]:
    """One Adam step on L_simple with t ~ U{0..T-1}, a minibatch drawn from `data` (model space), then EMA."""
    g = state.generator
    x0 = data[torch.randint(len(data), (batch_size,), generator=g)]
    t = torch.randint(len(sched), (batch_size,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    loss = l_simple(state.model, sched, x0, t, noise)
    for group in state.optimizer.param_groups:
        group["lr"] = lr
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(state.model.parameters(), grad_clip if grad_clip > 0 else math.inf)
    state.optimizer.step()
    ema_update(state.ema, state.model, ema_decay)
    state.step += 1
    return {"loss": loss.item(), "grad_norm": float(grad_norm), "lr": lr}


def checkpoint(state: TrainState, config: dict, history: dict[str, list[float]]) -> dict:
    """A weights_only-loadable dict: weights, EMA, optimiser, step, RNG state, config and loss history."""
    return {
        "model": state.model.state_dict(),
        "ema": state.ema.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "step": state.step,
        "rng": state.generator.get_state(),
        "config": config,
        "history": {k: _series_tensor(v) for k, v in history.items()},
    }


def _series_tensor(values: list) -> torch.Tensor:
    """Integer series (steps) stay int64, so a resumed history is identical to an unbroken one."""
    is_int = all(isinstance(v, int) for v in values)
    return torch.tensor(values, dtype=torch.int64 if is_int else torch.float64)


CHECKPOINT_KEYS = ("model", "ema", "optimizer", "step", "rng", "config", "history")


def restore(state: TrainState, ckpt: dict) -> dict[str, list[float]]:
    """Load a `checkpoint()` dict into state in place; return the loss history."""
    state.model.load_state_dict(ckpt["model"])
    state.ema.load_state_dict(ckpt["ema"])
    state.optimizer.load_state_dict(ckpt["optimizer"])
    state.generator.set_state(ckpt["rng"])
    state.step = int(ckpt["step"])
    return {k: v.tolist() for k, v in ckpt["history"].items()}
