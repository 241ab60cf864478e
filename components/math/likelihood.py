"""The variational bound on -log p(x0) (DDPM eq. 5; iDDPM §2.1 eqs. 4-7), as pure functions.

    L_vlb = L_T + sum_{t>=1} L_{t-1} + L_0, with
    L_T     = KL(q(x_T | x0) || N(0, I))                        (the prior term)
    L_{t-1} = KL(q(x_{t-1} | x_t, x0) || p_theta(x_{t-1} | x_t))  (t >= 1)
    L_0     = -log p_theta(x0 | x_1)                            (the decoder)

In code, schedule index 0 is the paper's x_1, so the decoder is the term at index 0. Element-wise
functions return nats per element; `*_term` functions return nats per sample, summed over the
data dimensions (B,). Convert to per dimension, or to bits, at the caller.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from components.math.diffusion import ReverseModel, extract, model_timesteps, q_posterior, q_sample, reverse_kernel
from components.math.schedules import Schedule

LOG_2PI = math.log(2 * math.pi)


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) per element, in nats."""
    return 0.5 * (logvar2 - logvar1 - 1.0 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, e^logvar) per element: the continuous decoder for real-valued data (nats)."""
    return -0.5 * (LOG_2PI + logvar + (x - mean) ** 2 * torch.exp(-logvar))


def _log_sub_exp(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """log(e^a - e^b) for a >= b, accurate when a - b is tiny (a narrow bin)."""
    return a + torch.log(-torch.expm1((b - a).clamp(max=0.0)))


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor,
                                        bits: int = 8) -> torch.Tensor:
    """log P(x) of `bits`-bit data scaled to [-1, 1]: N(mean, e^logvar) integrated over x's bin (DDPM §3.3).

    Bins are x +- 1/255; the outermost bins (x at -1 or +1, tested against +-0.999) extend to
    -inf and +inf, so the probabilities of all 256 values sum to one. The bin mass is taken from
    whichever tail is smaller, so it stays accurate far from the mean.
    """
    half_bin = 1.0 / (2**bits - 1)
    inv_std = torch.exp(-0.5 * logvar)
    upper, lower = (x - mean + half_bin) * inv_std, (x - mean - half_bin) * inv_std
    left = _log_sub_exp(torch.special.log_ndtr(upper), torch.special.log_ndtr(lower))  # Phi(u) - Phi(l)
    right = _log_sub_exp(torch.special.log_ndtr(-lower), torch.special.log_ndtr(-upper))  # same mass, upper tail
    mass = torch.where(x > mean, right, left)
    return torch.where(x < -0.999, torch.special.log_ndtr(upper),
                       torch.where(x > 0.999, torch.special.log_ndtr(-lower), mass))


# L_0's decoder: continuous data (points) or 8-bit images.
DECODERS: dict[str, Callable[..., torch.Tensor]] = {
    "continuous": gaussian_log_likelihood,
    "discretized": discretized_gaussian_log_likelihood,
}


def sum_flat(x: torch.Tensor) -> torch.Tensor:
    """Sum over every axis but the batch axis: (B, ...) -> (B,)."""
    return x.reshape(len(x), -1).sum(1)


def prior_kl(sched: Schedule, x0: torch.Tensor) -> torch.Tensor:
    """L_T = KL(q(x_T | x0) || N(0, I)) with q(x_T | x0) = N(sqrt(abar_T) x0, (1 - abar_T) I); nats (B,)."""
    t = torch.full((len(x0),), len(sched) - 1, dtype=torch.long, device=x0.device)
    mean = extract(sched.sqrt_alphas_cumprod, t, x0) * x0
    logvar = torch.log(extract(1.0 - sched.alphas_cumprod, t, x0))
    return sum_flat(normal_kl(mean, logvar, torch.zeros_like(mean), torch.zeros_like(logvar)))


def vlb_term(sched: Schedule, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, mean: torch.Tensor,
             log_var: torch.Tensor, decoder: str) -> torch.Tensor:
    """L_{t-1} of DDPM eq. 5 for p_theta = N(mean, e^log_var): the posterior KL for t >= 1, the decoder NLL at t = 0; nats (B,)."""
    true_mean, _ = q_posterior(sched, x0, x_t, t)
    true_logvar = extract(sched.posterior_log_variance_clipped, t, x_t)
    kl = sum_flat(normal_kl(true_mean, true_logvar, mean, log_var))
    decoder_nll = -sum_flat(DECODERS[decoder](x0, mean, log_var))
    return torch.where(t == 0, decoder_nll, kl)


def decoder_log_variance(sched: Schedule, t: torch.Tensor, log_var: torch.Tensor, *, variance: str,
                         decoder: str) -> torch.Tensor:
    """log Sigma of the reverse kernel as the bound scores it: `log_var`, except the fixed-large decoder on images.

    DDPM's and improved-diffusion's code, whose likelihoods are all on 8-bit images (the discretized decoder),
    give the fixed-large kernel log beta-tilde_1 at t = 0 in place of log beta_0
    (`Schedule.fixed_large_log_variance`), so a large-variance bound on images is comparable with DDPM's 3.75
    bits/dim on CIFAR-10 only under this convention. On continuous data (the toy's Gaussian decoder)
    Sigma = beta_t at every t is what DDPM §3.2 shows optimal for Gaussian data, and the papers' code has no
    such case, so t = 0 keeps log beta_0: there the exact model's bound closes on the true NLL as T grows
    (tests/components/math/test_likelihood.py), which beta-tilde_1 at t = 0 holds about 0.1 nats/dim above it at T = 1000.
    """
    if variance != "large" or decoder != "discretized":
        return log_var
    return torch.where((t == 0).reshape(-1, *([1] * (log_var.ndim - 1))),
                       extract(sched.fixed_large_log_variance, t, log_var), log_var)


@torch.no_grad()
def variational_bound(
    model: ReverseModel, sched: Schedule, x0: torch.Tensor, *, variance: str, generator: torch.Generator,
    decoder: str = "continuous", clip_x0: bool = False,
) -> dict[str, torch.Tensor]:
    """The full bound (DDPM eq. 5) on the chain `sched` (full or respaced), one x_t ~ q(x_t | x0) draw per term.

    For Sohl-Dickstein et al. 2015's model (kind "sd2015") this is minus their K (eqs. 13-14): the same
    posterior KLs, with the last step's decoder fixed to the forward kernel, and the prior term L_T in
    place of their entropy difference (equal when q(x_T | x0) = N(0, I), as under their schedule).
    Returns nats per sample: "prior" (B,), "terms" (S, B) with the decoder at index 0, and
    "total" (B,). The math runs in float64; the model sees x_t in the data's dtype.
    """
    x0d = x0.double()
    terms = []
    for i in range(len(sched)):
        t = torch.full((len(x0),), i, dtype=torch.long, device=x0.device)
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        x_t = q_sample(sched, x0, t, noise)
        out = model(x_t, model_timesteps(sched, t)).double()
        x_td = x_t.double()
        mean, log_var = reverse_kernel(sched, x_td, t, out, variance=variance, clip_x0=clip_x0)
        log_var = decoder_log_variance(sched, t, log_var, variance=variance, decoder=decoder)
        terms.append(vlb_term(sched, x0d, x_td, t, mean, log_var, decoder))
    terms = torch.stack(terms)  # (S, B)
    prior = prior_kl(sched, x0d)
    return {"prior": prior, "terms": terms, "total": prior + terms.sum(0)}


def bound_per_dim(total_nats: torch.Tensor, dims: int, decoder: str, scale: float = 1.0) -> torch.Tensor:
    """Per-sample bound per data dimension (B,), in the unit a data set's likelihood is reported in.

    continuous: nats/dim in data units. The chain models z = (x - shift) * scale, so
    -log p(x) = -log p(z) - dims * log(scale). discretized: bits/dim of the 8-bit values
    (a probability mass, so no Jacobian).
    """
    if decoder == "discretized":
        return total_nats / (dims * math.log(2))
    return total_nats / dims - math.log(scale)


def null_log_likelihood_bits(x0: torch.Tensor) -> float:
    """Sohl-Dickstein et al. 2015's L_null (Table 1): the mean log-likelihood of x0 (model space, unit variance)
    under N(0, I), in bits per sample; about -(D / 2) log2(2 pi e), -4.09 bits for 2-D points."""
    x = x0.double().reshape(len(x0), -1)
    return float((-0.5 * (x**2).sum(1) - 0.5 * x.shape[1] * LOG_2PI).mean()) / math.log(2)
