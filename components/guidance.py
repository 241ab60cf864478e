"""Classifier guidance (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs", §4).

Guidance is one gradient function, g(x_t, t) = s * grad_x log p_phi(y | x_t, t), evaluated once
per sampler step, and two one-line rules that combine it with the reverse process:

- ancestral DDPM (ADM Algorithm 1): shift the mean, mu + Sigma g (`guided_mean`);
- DDIM (ADM Algorithm 2): shift the noise prediction, eps - sqrt(1 - abar_t) g (`guided_eps`).

Since s * grad log p = grad log(p^s / Z), the scale samples (approximately) from
p(x) p(y | x)^s / Z: s = 1 is the conditional p(x | y), larger s sharpens the classifier.
A classifier maps (x_t, t) -> logits (B, K), t being the diffusion's original timesteps,
exactly as eps_theta is called.
"""

from __future__ import annotations

from typing import Callable

import torch

from components.diffusion import extract
from components.schedules import Schedule

Classifier = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, t) -> logits (B, K)
GradFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, t) -> s * grad_x log p(y | x_t, t)


def classifier_grad(classifier: Classifier, y: torch.Tensor, scale: float) -> GradFn:
    """g(x_t, t) = s * grad_x log p_phi(y | x_t, t) for the fixed targets y (B,): ADM's `cond_fn`.

    One forward and one backward pass of the classifier per call, under enable_grad, so it
    works inside the samplers' no_grad loops; the result is detached, of x_t's shape and dtype.
    """

    def grad(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            x = x_t.detach().requires_grad_(True)
            log_p = torch.log_softmax(classifier(x, t), dim=-1)
            selected = log_p[torch.arange(len(y), device=y.device), y]
            return scale * torch.autograd.grad(selected.sum(), x)[0]

    return grad


def guided_mean(mean: torch.Tensor, log_var: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """ADM Algorithm 1: x_{t-1} ~ N(mu + Sigma g, Sigma), with g = s * grad log p_phi(y | x_t)."""
    return mean + torch.exp(log_var) * g


def guided_eps(sched: Schedule, t: torch.Tensor, eps: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """ADM Algorithm 2: eps^ = eps_theta(x_t) - sqrt(1 - abar_t) g, t schedule indices; DDIM then steps with eps^."""
    return eps - extract(sched.sqrt_one_minus_alphas_cumprod, t, eps) * g
