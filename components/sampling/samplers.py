"""Samplers: one short function per paper, sharing one model contract.

Model contract: `model(x_t, t) -> diffusion.ModelOutput`, a network's raw output with its kind, which
`diffusion.ReverseModel(net, kind)` makes of any network (k-diffusion's way: a thin adapter, not an
argument through every sampler). Kind "eps": eps, or eps and v stacked along the channel axis (2C
channels) for a learned-variance model (iDDPM); `diffusion.split_output` tells them apart. Kind
"sd2015": Sohl-Dickstein et al. 2015's (z_mu, z_Sigma), which only the ancestral sampler reads
(`diffusion.reverse_kernel`). x_t is (B, C, ...) and t a LongTensor (B,) of *original* training
timesteps. Samplers walk a (possibly respaced) `Schedule` from its last index to 0; the timestep grid
is chosen outside, by `schedules.make_trajectory` + `respace`. Randomness comes in only through `generator`.

Conditioning enters in two optional ways (`components/sampling/guidance.py`). A gradient function
`guidance(x_t, t)` = grad_x log r(x_t), called once per step and combined in one line by each
sampler's rule: Sohl-Dickstein et al. 2015's multiplied distribution p(x) r(x) (§2.5), of which
ADM's classifier guidance is the case r = p(y | x)^s. And `known`, a delta factor on some
coordinates: they are imposed on every state, x_T included, and the rest is sampled (inpainting), by the
factor's rule (`guidance.impose_known`: clamped to x0, or noised to each state's level abar on this schedule).
Without either the samplers are unchanged.

DDGAN's sampler (`sample_ddgan`) walks the same schedules, but its model is a generator
G(x_t, t, z) -> x0-hat with latent size nz (`GANGenerator`, the same kind of adapter), so it is kept
out of `SAMPLERS` (components/sampling/registry.py), the registry of eps-model samplers that sweep cells choose from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from tqdm.auto import tqdm

from components.math.diffusion import (
    ReverseModel, ddim_sigma, eps_to_x0, model_timesteps, reverse_kernel, sample_posterior, x0_to_eps,
)
from components.sampling.guidance import GradFn, Known, guided_eps, impose_known, guided_mean
from components.math.schedules import Schedule


@dataclass(frozen=True)
class GANGenerator:
    """DDGAN's sampler's model contract: `net` maps (x_t, t, z (B, nz)) -> x0-hat, t the original timesteps."""

    net: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    nz: int  # the latent size: z ~ N(0, I_nz)


def _model_output(model: ReverseModel, sched: Schedule, x: torch.Tensor, i: int):
    """Call the model at schedule index i; return (t, eps, v), v None for an eps-only model."""
    t = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
    eps, v = model(x, model_timesteps(sched, t)).eps(x)
    return t, eps, v


def _known_on(known: Known | None, device: torch.device) -> Known | None:
    """`known` on the chain's device: a mask built on the host still clamps a chain run on a GPU."""
    return None if known is None else Known(known.mask.to(device), known.values.to(device), known.rule)


def _guidance_at(guidance: GradFn, sched: Schedule, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """s * grad log p(y | x_t) at schedule indices t; the classifier, like the model, sees original timesteps."""
    return guidance(x, model_timesteps(sched, t))


@torch.no_grad()
def sample_ddpm(
    model: ReverseModel,
    sched: Schedule,
    x_T: torch.Tensor,
    *,
    generator: torch.Generator,
    variance: str = "small",
    clip_x0: bool = False,
    guidance: GradFn | None = None,
    known: Known | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """DDPM Algorithm 2, ancestral: x_{t-1} = mu_theta(x_t, t) + Sigma_theta^(1/2) z, with no noise at the last step.

    mu_theta is DDPM eq. 11; Sigma_theta is fixed (small: beta-tilde, large: beta; DDPM §3.2) or
    learned (iDDPM eq. 15), all on this schedule's own betas. A model of kind "sd2015" is read as
    Sohl-Dickstein et al. 2015's kernel instead (`diffusion.reverse_kernel`): the same walk, the same
    noise. With `guidance` = grad log r, the mean shifts by Sigma grad log r (Sohl-Dickstein et al.
    2015 eq. 61; ADM Algorithm 1 with r = p(y | x)^s); with `known`, those coordinates are imposed on x_T (at
    abar_T) and on the state each step produces (at abar_{t-1}, `alphas_cumprod_prev`).
    """
    known = _known_on(known, x_T.device)
    x = impose_known(x_T, known, float(sched.alphas_cumprod[-1]), generator)
    for i in tqdm(range(len(sched) - 1, -1, -1), disable=not progress, desc=f"ddpm-{len(sched)}", leave=False):
        t = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
        out = model(x, model_timesteps(sched, t))
        mean, log_var = reverse_kernel(sched, x, t, out, variance=variance, clip_x0=clip_x0)
        if guidance is not None:
            mean = guided_mean(mean, log_var, _guidance_at(guidance, sched, x, t))
        if i == 0:
            return impose_known(mean, known, float(sched.alphas_cumprod_prev[i]), generator)
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        x = impose_known(mean + torch.exp(0.5 * log_var) * noise, known, float(sched.alphas_cumprod_prev[i]), generator)
    return x


@torch.no_grad()
def sample_ddim(
    model: ReverseModel,
    sched: Schedule,
    x_T: torch.Tensor,
    *,
    generator: torch.Generator,
    eta: float = 0.0,
    clip_x0: bool = False,
    guidance: GradFn | None = None,
    known: Known | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """DDIM eq. 12: x_{t-1} = sqrt(a_{t-1}) x0-hat + sqrt(1 - a_{t-1} - sigma_t^2) eps + sigma_t z.

    sigma_t(eta) is eq. 16: eta = 0 is deterministic DDIM, eta = 1 has DDPM's posterior variance.
    With `guidance`, eps becomes eps - sqrt(1 - abar_t) s grad log p(y | x_t) and x0-hat follows
    from it (ADM Algorithm 2); any grad log r works the same way. With `known`, those coordinates are imposed on
    x_T (at abar_T) and on each x_{t-1} (at a_{t-1}).
    """
    sigma = ddim_sigma(sched, eta)
    known = _known_on(known, x_T.device)
    x = impose_known(x_T, known, float(sched.alphas_cumprod[-1]), generator)
    for i in tqdm(range(len(sched) - 1, -1, -1), disable=not progress, desc=f"ddim-{len(sched)}", leave=False):
        t, eps, _ = _model_output(model, sched, x, i)
        x0 = eps_to_x0(sched, x, t, eps)
        if clip_x0:  # iDDPM's convention: clip x0-hat, then recompute eps so both stay consistent
            x0 = x0.clamp(-1.0, 1.0)
            eps = x0_to_eps(sched, x, t, x0)
        if guidance is not None:  # ADM's condition_score: after the clip, x0-hat recomputed, not re-clipped
            eps = guided_eps(sched, t, eps, _guidance_at(guidance, sched, x, t))
            x0 = eps_to_x0(sched, x, t, eps)
        a_prev = float(sched.alphas_cumprod_prev[i])
        x = a_prev**0.5 * x0 + (1.0 - a_prev - sigma[i] ** 2) ** 0.5 * eps
        if sigma[i] > 0:
            x = x + float(sigma[i]) * torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        x = impose_known(x, known, a_prev, generator)
    return x


@torch.no_grad()
def sample_ddgan(G: GANGenerator, sched: Schedule, x_T: torch.Tensor, *, generator: torch.Generator,
                 progress: bool = False) -> torch.Tensor:
    """DDGAN's sampler (Xiao et al. 2022, §3.3): x_{t-1} ~ q(x_{t-1} | x_t, x0 = G(x_t, z, t)), z ~ N(0, I) fresh each step.

    One generator call per step (NFE = T). The posterior has zero variance at t = 0, so the
    last step returns G's x0-hat.
    """
    x = x_T
    for i in tqdm(range(len(sched) - 1, -1, -1), disable=not progress, desc=f"ddgan-{len(sched)}", leave=False):
        t = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
        z = torch.randn((x.shape[0], G.nz), generator=generator, dtype=x.dtype, device=x.device)
        x0 = G.net(x, model_timesteps(sched, t), z)
        x = sample_posterior(sched, x0, x, t, torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device))
    return x
