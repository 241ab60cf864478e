"""Samplers: one short function per paper, sharing one model contract.

Model contract: `model(x_t, t) -> eps`, with x_t of shape (B, ...) and t a LongTensor (B,) of
*original* training timesteps. Samplers walk a (possibly respaced) `Schedule` from its last
index to 0; the timestep grid is chosen outside, by `schedules.make_trajectory` + `respace`.
Randomness comes in only through `generator`.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from components.diffusion import ddim_sigma, eps_to_x0, extract, model_timesteps, q_posterior, x0_to_eps
from components.schedules import Schedule

EpsModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# DDPM's two fixed variances (DDPM §3.2): sigma_t^2 = beta-tilde_t ("small") or beta_t ("large").
FIXED_VARIANCES = {
    "small": lambda s: s.posterior_variance,
    "large": lambda s: s.betas,
}


def _denoise(model: EpsModel, sched: Schedule, x: torch.Tensor, i: int, clip_x0: bool):
    """Call the model at schedule index i; return (t, eps, x0-hat), x0 clipped to [-1, 1] if asked.

    Clipping follows iDDPM: clip x0-hat, then recompute eps from it so both stay consistent.
    """
    t = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
    eps = model(x, model_timesteps(sched, t))
    x0 = eps_to_x0(sched, x, t, eps)
    if clip_x0:
        x0 = x0.clamp(-1.0, 1.0)
        eps = x0_to_eps(sched, x, t, x0)
    return t, eps, x0


@torch.no_grad()
def sample_ddpm(
    model: EpsModel,
    sched: Schedule,
    x_T: torch.Tensor,
    *,
    generator: torch.Generator,
    variance: str = "small",
    clip_x0: bool = False,
    progress: bool = False,
) -> torch.Tensor:
    """DDPM Algorithm 2, ancestral: x_{t-1} = mu_theta(x_t, t) + sigma_t z, with no noise at the last step.

    mu_theta is DDPM eq. 11, computed as the posterior mean mu-tilde(x0-hat, x_t) (eq. 7).
    """
    sigma_table = np.sqrt(FIXED_VARIANCES[variance](sched))
    x = x_T
    for i in tqdm(range(len(sched) - 1, -1, -1), disable=not progress, desc=f"ddpm-{len(sched)}", leave=False):
        t, _, x0 = _denoise(model, sched, x, i, clip_x0)
        mean, _ = q_posterior(sched, x0, x, t)
        if i == 0:
            return mean
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        x = mean + extract(sigma_table, t, x) * noise
    return x


@torch.no_grad()
def sample_ddim(
    model: EpsModel,
    sched: Schedule,
    x_T: torch.Tensor,
    *,
    generator: torch.Generator,
    eta: float = 0.0,
    clip_x0: bool = False,
    progress: bool = False,
) -> torch.Tensor:
    """DDIM eq. 12: x_{t-1} = sqrt(a_{t-1}) x0-hat + sqrt(1 - a_{t-1} - sigma_t^2) eps + sigma_t z.

    sigma_t(eta) is eq. 16: eta = 0 is deterministic DDIM, eta = 1 has DDPM's posterior variance.
    """
    sigma = ddim_sigma(sched, eta)
    x = x_T
    for i in tqdm(range(len(sched) - 1, -1, -1), disable=not progress, desc=f"ddim-{len(sched)}", leave=False):
        t, eps, x0 = _denoise(model, sched, x, i, clip_x0)
        a_prev = float(sched.alphas_cumprod_prev[i])
        x = a_prev**0.5 * x0 + (1.0 - a_prev - sigma[i] ** 2) ** 0.5 * eps
        if sigma[i] > 0:
            x = x + float(sigma[i]) * torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return x


SAMPLERS = {"ddpm": sample_ddpm, "ddim": sample_ddim}
