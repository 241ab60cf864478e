"""Multiplying distributions (Sohl-Dickstein et al. 2015, §2.5) and classifier guidance (Dhariwal & Nichol 2021,
"Diffusion Models Beat GANs", §4), one mechanism.

To sample p~(x) ∝ p(x) r(x) with a Gaussian reverse step N(mu, Sigma), r held constant over t (eq. 23),
each step draws from N(mu, Sigma) r(x_{t-1}); for a smooth r that is N(mu + Sigma grad log r, Sigma)
(eq. 61, appendix C). So a factor is one gradient function, g(x_t, t) = grad_x log r, evaluated once per
sampler step (at x_t, as ADM does; the paper expands around mu, the same to first order), and two
one-line rules combine it with the reverse process:

- ancestral DDPM (eq. 61, ADM Algorithm 1): shift the mean, mu + Sigma g (`guided_mean`);
- DDIM (ADM Algorithm 2): shift the noise prediction, eps - sqrt(1 - abar_t) g (`guided_eps`).

Classifier guidance is the factor r = p_phi(y | x_t, t)^s (`classifier_grad`): s = 1 is the
conditional p(x | y), larger s sharpens the classifier. A classifier maps (x_t, t) -> logits
(B, K), t being the diffusion's original timesteps, exactly as eps_theta is called. The smooth
factor `gaussian_factor` needs no network. A delta on known coordinates
multiplies in exactly: those coordinates are clamped to their values at every step and the others
are sampled (`Known`, `clamp_known`; inpainting, which the paper shows on a bark texture).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from components.math.diffusion import extract
from components.math.schedules import Schedule

Classifier = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, t) -> logits (B, K)
GradFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, t) -> grad_x log r(x_t), as s grad log p(y | x_t)


@dataclass(frozen=True)
class Known:
    """A delta factor: coordinates where `mask` (x's per-sample shape, bool) is True are known to be `values`."""

    mask: torch.Tensor
    values: torch.Tensor  # x's per-sample shape, model space


def clamp_known(x: torch.Tensor, known: Known | None) -> torch.Tensor:
    """x with its known coordinates set to their values (Sohl-Dickstein et al. 2015 §2.5: a delta multiplies in
    exactly); x itself when nothing is known."""
    if known is None:
        return x
    return torch.where(known.mask, known.values.to(x.dtype), x)


def gaussian_factor(center: torch.Tensor, std: float) -> GradFn:
    """r(x) = N(x; center, std^2 I), a smooth bump (model space): grad log r = (center - x) / std^2."""
    def grad(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (center.to(x_t.dtype) - x_t) / std**2
    return grad


def classifier_grad(classifier: Classifier, y: torch.Tensor, scale: float) -> GradFn:
    """g(x_t, t) = s * grad_x log p_phi(y | x_t, t) for the fixed targets y (B,): ADM's `cond_fn`, the factor
    r = p_phi(y | x_t)^s.

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
    """x_{t-1} ~ N(mu + Sigma g, Sigma), g = grad log r: Sohl-Dickstein et al. 2015 eq. 61, and ADM Algorithm 1
    with r = p_phi(y | x_t)^s."""
    return mean + torch.exp(log_var) * g


def guided_eps(sched: Schedule, t: torch.Tensor, eps: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """ADM Algorithm 2: eps^ = eps_theta(x_t) - sqrt(1 - abar_t) g, t schedule indices; DDIM then steps with eps^."""
    return eps - extract(sched.sqrt_one_minus_alphas_cumprod, t, eps) * g
