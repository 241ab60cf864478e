"""Denoising Diffusion GAN (Xiao, Kreis & Vahdat 2022): few large denoising steps, each a conditional GAN.

With T small, q(x_{t-1} | x_t) is multimodal, so DDGAN models it implicitly:
p_theta(x_{t-1} | x_t) = E_z[q(x_{t-1} | x_t, x0 = G(x_t, z, t))] (§3.3). The generator predicts
x0-hat and the known posterior q(x_{t-1} | x_t, x0) (DDPM eqs. 6-7) does the rest, and a
discriminator D(x_{t-1}, x_t, t) tells real pairs, drawn from q(x_{t-1} | x0) q(x_t | x_{t-1}), from
the generator's (§3.2). Both use the non-saturating GAN loss; D has a lazy R1 penalty on real
pairs (DDGAN's training code, after StyleGAN2).

Indices follow `components.math.diffusion`: t = 0..T-1 is a schedule index, x_t has abar_t, and
x_{-1} is the data x0 (abar_{-1} = 1). The pair at t = 0 is (x0, x_0), so q's posterior there
has zero variance and the last denoising step returns x0-hat itself.

Models: G(x_t, t, z) -> x0-hat and D(x_{t-1}, x_t, t) -> logit (B,) (`components.networks.mlp`).
`ddgan_train_step(state, ...) -> metrics` is one D step and one G step, as in DDGAN's loop, over a
`components.training.state.TrainState` of networks "G" and "D" (the EMA follows G), each called through
its forward (the runtime's precision, channels_last and compile).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch.nn.functional import softplus

from components.math.diffusion import extract, sample_posterior
from components.math.schedules import Schedule
from components.training.state import TrainState, end_step, network_step
from components.training.steps import minibatch

Discriminator = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (x_{t-1}, x_t, t) -> (B,)


def q_sample_pair(sched: Schedule, x0: torch.Tensor, t: torch.Tensor, noise_prev: torch.Tensor,
                  noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A real pair (x_{t-1}, x_t) ~ q(x_{t-1} | x0) q(x_t | x_{t-1}) (DDPM eqs. 4 and 2; DDGAN's training pairs).

    x_{t-1} = sqrt(abar_{t-1}) x0 + sqrt(1 - abar_{t-1}) noise_prev (x0 itself at t = 0), then one
    forward step x_t = sqrt(alpha_t) x_{t-1} + sqrt(beta_t) noise.
    """
    abar_prev = sched.alphas_cumprod_prev
    x_prev = extract(np.sqrt(abar_prev), t, x0) * x0 + extract(np.sqrt(1.0 - abar_prev), t, x0) * noise_prev
    x_t = extract(np.sqrt(sched.alphas), t, x0) * x_prev + extract(np.sqrt(sched.betas), t, x0) * noise
    return x_prev, x_t


def d_losses(D: Discriminator, real_prev: torch.Tensor, fake_prev: torch.Tensor, x_t: torch.Tensor,
             t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The discriminator's non-saturating loss per sample: softplus(-D(real)) and softplus(D(fake)), each (B,)."""
    return softplus(-D(real_prev, x_t, t)), softplus(D(fake_prev, x_t, t))


def g_loss(D: Discriminator, fake_prev: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The generator's non-saturating loss per sample, softplus(-D(fake)) (B,)."""
    return softplus(-D(fake_prev, x_t, t))


def r1_penalty(D: Discriminator, real_prev: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """R1 per sample, ||grad_{x_{t-1}} D(x_{t-1}, x_t, t)||^2 on real pairs (B,), differentiable (Mescheder et al. 2018).

    As in DDGAN's code, the gradient is taken with respect to the denoised input x_{t-1} only.
    """
    real_prev = real_prev.detach().requires_grad_(True)
    with torch.enable_grad():
        out = D(real_prev, x_t, t).sum()
        (grad,) = torch.autograd.grad(out, real_prev, create_graph=True, allow_unused=True)
    if grad is None:  # D does not read x_{t-1} at all: its gradient there is zero
        return torch.zeros(len(real_prev), dtype=real_prev.dtype, device=real_prev.device)
    return grad.reshape(len(grad), -1).pow(2).sum(1)


def mean_by_t(values: torch.Tensor, t: torch.Tensor, T: int) -> torch.Tensor:
    """The mean of per-sample `values` at each t = 0..T-1 (T,), float64 on their device; NaN where the batch has no
    sample at t."""
    sums = torch.zeros(T, dtype=torch.float64, device=t.device).index_add_(0, t, values.detach().double())
    counts = torch.bincount(t, minlength=T).double()
    return sums / counts  # 0/0 = NaN


def ddgan_train_step(
    state: TrainState, sched: Schedule, data: torch.Tensor, *, batch_size: int, lr_g: float, lr_d: float,
    r1_gamma: float, r1_every: int, ema_decay: float, grad_clip: float = 0.0,
) -> dict[str, torch.Tensor | float]:
    """One DDGAN iteration: a D step, then a G step on fresh pairs, then the EMA of G (DDGAN's training loop).

    D minimises softplus(-D(real)) + softplus(D(fake)) + [every r1_every steps] r1_gamma / 2 * R1,
    the lazy R1 unscaled by the interval, as DDGAN's code has it. G minimises softplus(-D(fake)).
    grad_clip > 0 clips each network's global gradient norm (DDGAN does not clip: 0).
    A fake x_{t-1} is drawn from q(x_{t-1} | x_t, G(x_t, z, t)), z ~ N(0, I) fresh for each sample.
    Metrics: each loss's mean over the batch and at each t (`d_loss_t0`, ...), 0-dim tensors left on the
    device (the loop reads them in batches); R1 is NaN on the steps that skip it. Among several replicas each
    rank's metrics are its share's (the loop averages them over the ranks), and a minibatch-stddev feature of D
    (`components.networks.generator.ConvDiscriminator`) sees the rank's share alone, as in DDGAN's multi-GPU runs.
    """
    G, D, g, T, share = state.forwards["G"], state.forwards["D"], state.generator, len(sched), state.replicas.share
    nz = state.nets["G"].nz

    # Every draw is the whole batch's, then this rank keeps its share (`state.replicas`; all of it in one process).
    def pairs():
        x0, _ = minibatch(data, batch_size, g)
        t = torch.randint(T, (batch_size,), generator=g, device=g.device)
        noise_prev, noise = (torch.randn(x0.shape, generator=g, device=g.device) for _ in range(2))
        x0, t, noise_prev, noise = share(x0, t, noise_prev, noise)
        x_prev, x_t = q_sample_pair(sched, x0, t, noise_prev, noise)
        return x_prev, x_t, t

    def fake(x_t, t):
        z = torch.randn((batch_size, nz), generator=g, device=g.device)
        noise = torch.randn((batch_size, *x_t.shape[1:]), generator=g, device=g.device)
        z, noise = share(z, noise)
        return sample_posterior(sched, G(x_t, t, z), x_t, t, noise)

    # Discriminator step: real pairs against the generator's, G frozen.
    real_prev, x_t, t = pairs()
    with torch.no_grad():
        fake_prev = fake(x_t, t)
    loss_real, loss_fake = d_losses(D, real_prev, fake_prev, x_t, t)
    loss_d = (loss_real + loss_fake).mean()
    r1 = None
    if state.step % r1_every == 0:
        r1 = r1_penalty(D, real_prev, x_t, t)
        loss_d = loss_d + r1_gamma / 2 * r1.mean()
    network_step(state, "D", loss_d, lr=lr_d, grad_clip=grad_clip)
    d_per_t = mean_by_t(loss_real + loss_fake, t, T)
    r1_per_t = mean_by_t(r1, t, T) if r1 is not None else [math.nan] * T
    r1_mean = r1.detach().mean() if r1 is not None else math.nan

    # Generator step on fresh pairs, D frozen.
    _, x_t, t = pairs()
    state.nets["D"].requires_grad_(False)
    loss_g = g_loss(D, fake(x_t, t), x_t, t)
    network_step(state, "G", loss_g.mean(), lr=lr_g, grad_clip=grad_clip)
    state.nets["D"].requires_grad_(True)
    end_step(state, ema_decay)  # the EMA of G

    metrics = {"d_loss": (loss_real + loss_fake).detach().mean(), "g_loss": loss_g.detach().mean(), "r1": r1_mean}
    g_per_t = mean_by_t(loss_g, t, T)
    for i in range(T):
        metrics |= {f"d_loss_t{i}": d_per_t[i], f"g_loss_t{i}": g_per_t[i], f"r1_t{i}": r1_per_t[i]}
    return metrics
