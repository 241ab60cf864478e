"""Gaussian diffusion math as free functions over an explicit `Schedule`.

`t` is always a LongTensor (B,) of *schedule indices* (0..len(sched)-1). Tables are float64
and are cast to the data's dtype only after indexing, so respaced schedules lose nothing.
Shapes: x0, x_t, eps are (B, ...) with any trailing shape.
"""

from __future__ import annotations

import numpy as np
import torch

from components.schedules import Schedule


def extract(table: np.ndarray, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """table[t] as a (B, 1, ..., 1) tensor that broadcasts against `like`."""
    vals = torch.from_numpy(table).to(like.device)[t].to(like.dtype)
    return vals.reshape(-1, *([1] * (like.ndim - 1)))


def q_sample(sched: Schedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, a draw from q(x_t | x0) (DDPM eq. 4)."""
    return extract(sched.sqrt_alphas_cumprod, t, x0) * x0 + extract(sched.sqrt_one_minus_alphas_cumprod, t, x0) * noise


def eps_to_x0(sched: Schedule, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t) (DDPM eq. 4 solved for x0; DDIM eq. 12's x0-hat)."""
    return (x_t - extract(sched.sqrt_one_minus_alphas_cumprod, t, x_t) * eps) * extract(
        sched.sqrt_recip_alphas_cumprod, t, x_t)


def x0_to_eps(sched: Schedule, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """eps = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t) (DDPM eq. 4 solved for eps)."""
    return (x_t - extract(sched.sqrt_alphas_cumprod, t, x_t) * x0) * extract(
        sched.sqrt_recip_one_minus_alphas_cumprod, t, x_t)


def q_posterior(
    sched: Schedule, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean mu-tilde and variance beta-tilde of q(x_{t-1} | x_t, x0) (DDPM eqs. 6-7)."""
    mean = extract(sched.posterior_mean_coef1, t, x_t) * x0 + extract(sched.posterior_mean_coef2, t, x_t) * x_t
    return mean, extract(sched.posterior_variance, t, x_t)


def ddim_sigma(sched: Schedule, eta: float) -> np.ndarray:
    """DDIM eq. 16: sigma_t(eta) = eta sqrt((1 - a_{t-1}) / (1 - a_t)) sqrt(1 - a_t / a_{t-1}), a = abar."""
    a, a_prev = sched.alphas_cumprod, sched.alphas_cumprod_prev
    return eta * np.sqrt((1.0 - a_prev) / (1.0 - a)) * np.sqrt(1.0 - a / a_prev)


def model_timesteps(sched: Schedule, t: torch.Tensor) -> torch.Tensor:
    """The original training timesteps for schedule indices t: what the network is called with."""
    return torch.from_numpy(sched.timesteps).to(t.device)[t]
