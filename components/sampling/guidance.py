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
factor `gaussian_factor` needs no network. A delta on known coordinates multiplies in exactly: the
others are sampled and the known ones are imposed on every state of the chain (`Known`, `impose_known`;
inpainting, which the paper shows on a bark texture), by one of two rules:

- "clamp" (Sohl-Dickstein et al. 2015 §2.5, r(x^(t)) held constant over t, eq. 23): the known coordinates are
  their clean values x0 at every step, x_T included;
- "noised" (Song et al. 2021, "Score-Based Generative Modeling through SDEs", appendix I.2; RePaint, Lugmayr et
  al. 2022, eq. 8, without its resampling): they are a fresh draw of q(x_t | x0) = N(sqrt(abar_t) x0,
  (1 - abar_t) I) (DDPM eq. 4) at the noise level of the state being produced, so the network sees inputs at the
  noise level it was trained for; the last state (abar = 1) is x0 exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from components.math.diffusion import extract
from components.math.schedules import Schedule

Classifier = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, t) -> logits (B, K)
GradFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, t) -> grad_x log r(x_t), as s grad log p(y | x_t)


KNOWN_RULES = ("clamp", "noised")  # how known coordinates enter each state of the chain (module docstring)


@dataclass(frozen=True)
class Known:
    """A delta factor: coordinates where `mask` (bool) is True are known to be `values` (x0, model space), imposed
    on each state by `rule`. mask and values are x's per-sample shape or broadcast against x (B, ...): per-sample
    values (B, C, H, W) inpaint each sample from its own source."""

    mask: torch.Tensor
    values: torch.Tensor
    rule: str = "clamp"

    def __post_init__(self):
        if self.rule not in KNOWN_RULES:
            raise ValueError(f"unknown rule {self.rule!r}; allowed: {', '.join(KNOWN_RULES)}")


def impose_known(x: torch.Tensor, known: Known | None, abar: float, generator: torch.Generator) -> torch.Tensor:
    """x, a state at noise level abar (x_t ~ q(x_t | x0), DDPM eq. 4), with its known coordinates imposed; x itself
    when nothing is known.

    Rule "clamp": set to x0 (Sohl-Dickstein et al. 2015 §2.5: a delta multiplies in exactly); draws no noise.
    Rule "noised": set to sqrt(abar) x0 + sqrt(1 - abar) z, z ~ N(0, I) from `generator` (Song et al. 2021,
    appendix I.2; RePaint eq. 8), one draw of x's shape; at abar = 1 that is x0 and nothing is drawn.
    """
    if known is None:
        return x
    values = known.values.to(x.dtype)
    if known.rule == "noised" and abar < 1.0:
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        values = abar**0.5 * values + (1.0 - abar) ** 0.5 * z
    return torch.where(known.mask, values, x)


def inpaint_mask(region: str, shape: tuple[int, ...], size: int | None = None) -> torch.Tensor:
    """The hidden (sampled) pixels of images of `shape` (C, H, W), bool, all channels alike: region "bottom" (the last
    H // 2 rows), "left" (the first W // 2 columns) or "square" (centred, side `size`, default half the shorter
    side rounded up). Its complement is the known part: `Known(~mask, source, rule)`."""
    C, H, W = shape
    hidden = torch.zeros(shape, dtype=torch.bool, device="cpu")
    if region == "bottom":
        hidden[:, H - H // 2:, :] = True
    elif region == "left":
        hidden[:, :, : W // 2] = True
    elif region == "square":
        side = (min(H, W) + 1) // 2 if size is None else size
        if not 1 <= side <= min(H, W):
            raise ValueError(f"a square of side {side} does not fit in {H} x {W} images")
        top, left = (H - side) // 2, (W - side) // 2
        hidden[:, top:top + side, left:left + side] = True
    else:
        raise ValueError(f"unknown inpaint region {region!r}; allowed: bottom, left, square")
    return hidden


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
