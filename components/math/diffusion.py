"""Gaussian diffusion math as free functions over an explicit `Schedule`.

`t` is always a LongTensor (B,) of *schedule indices* (0..len(sched)-1). Tables are float64
and are cast to the data's dtype only after indexing, so respaced schedules lose nothing.
Shapes: x0, x_t, eps, v are (B, C, ...) with any trailing shape.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from components.math.variances import VARIANCES  # DDPM's two fixed variances (§3.2), iDDPM's learned one (eq. 15)
from components.math.schedules import Schedule


# Schedule tables as tensors, one per (table, device), so a sampler step indexes a tensor already on the
# device instead of copying the table from the host. Keyed by the array's id; an entry holds only a weak
# reference to its array and is dropped when the array dies, so a freed id is never matched to a new array,
# and temporary tables (np.sqrt(sched.alphas)) leave no entry behind. Tables are never modified in place.
TABLE_CACHE_SIZE = 256
_tables: OrderedDict[tuple[int, torch.device], tuple[weakref.ref, torch.Tensor]] = OrderedDict()


def _forget(key: tuple[int, torch.device], ref: weakref.ref) -> None:
    entry = _tables.get(key)
    if entry is not None and entry[0] is ref:
        del _tables[key]


def device_table(table: np.ndarray, device: torch.device) -> torch.Tensor:
    """`table` as a tensor on `device` in its own dtype (float64 stays float64), copied at most once per device."""
    key = (id(table), torch.device(device))
    entry = _tables.get(key)
    if entry is not None and entry[0]() is table:
        _tables.move_to_end(key)  # least recently used first out
        return entry[1]
    # a copy even on the CPU: a tensor sharing the array's memory would keep the array, and so the entry, alive
    tensor = torch.from_numpy(table).to(key[1], copy=True)
    _tables[key] = (weakref.ref(table, lambda ref, key=key: _forget(key, ref)), tensor)
    if len(_tables) > TABLE_CACHE_SIZE:
        _tables.popitem(last=False)
    return tensor


def extract(table: np.ndarray, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """table[t] as a (B, 1, ..., 1) tensor that broadcasts against `like`, cast to its dtype after indexing."""
    vals = device_table(table, like.device)[t].to(like.dtype)
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


def sample_posterior(sched: Schedule, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                     noise: torch.Tensor) -> torch.Tensor:
    """x_{t-1} ~ q(x_{t-1} | x_t, x0) (DDPM eqs. 6-7): mu-tilde + sqrt(beta-tilde) noise.

    beta-tilde_0 = 0 (abar_{-1} = 1), so the last step returns mu-tilde_0 = x0 exactly: DDGAN's
    sampler adds no noise at the last step.
    """
    mean, var = q_posterior(sched, x0, x_t, t)
    return mean + var.sqrt() * noise


def ddim_sigma(sched: Schedule, eta: float) -> np.ndarray:
    """DDIM eq. 16: sigma_t(eta) = eta sqrt((1 - a_{t-1}) / (1 - a_t)) sqrt(1 - a_t / a_{t-1}), a = abar."""
    a, a_prev = sched.alphas_cumprod, sched.alphas_cumprod_prev
    return eta * np.sqrt((1.0 - a_prev) / (1.0 - a)) * np.sqrt(1.0 - a / a_prev)


def model_timesteps(sched: Schedule, t: torch.Tensor) -> torch.Tensor:
    """The original training timesteps for schedule indices t: what the network is called with."""
    return device_table(sched.timesteps, t.device)[t]


# --- the reverse process p_theta(x_{t-1} | x_t) ------------------------------------------


def split_output(out: torch.Tensor, x_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The one place a network output is split: C channels are eps; 2C channels are eps then v (iDDPM §3.1)."""
    c = x_t.shape[1]
    if out.shape[1] == c:
        return out, None
    if out.shape[1] == 2 * c:
        return out[:, :c], out[:, c:]
    raise ValueError(f"model output has {out.shape[1]} channels; expected {c} (eps) or {2 * c} (eps and v)")


def reverse_log_variance(sched: Schedule, t: torch.Tensor, like: torch.Tensor, variance: str,
                         v: torch.Tensor | None = None) -> torch.Tensor:
    """log Sigma_theta(x_t, t) of p_theta(x_{t-1} | x_t), broadcast against `like`.

    small: log beta-tilde_t, with beta-tilde_1 at t = 0 where beta-tilde_0 = 0; large: log beta_t
    (DDPM §3.2, at every t; the bound on 8-bit images uses the papers' code's t = 0 value instead,
    `likelihood.decoder_log_variance`). learned: iDDPM eq. 15,
    log Sigma = frac log beta_t + (1 - frac) log beta-tilde_t with frac = (v + 1) / 2, on this
    schedule's own (possibly respaced) betas and beta-tildes.
    """
    min_log = sched.posterior_log_variance_clipped
    if variance == "small":
        return extract(min_log, t, like)
    if variance == "large":
        return extract(sched.log_betas, t, like)
    if variance == "learned":
        if v is None:
            raise ValueError("variance 'learned' needs a model with a variance output (2C channels: eps and v)")
        frac = (v + 1) / 2
        return frac * extract(sched.log_betas, t, v) + (1 - frac) * extract(min_log, t, v)
    raise ValueError(f"unknown variance {variance!r}; allowed: {', '.join(VARIANCES)}")


def p_mean_variance(
    sched: Schedule, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, v: torch.Tensor | None, *,
    variance: str, clip_x0: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean, log-variance and x0-hat of p_theta(x_{t-1} | x_t) from the network's eps (and v).

    The mean is DDPM eq. 11, computed as the posterior mean mu-tilde(x0-hat, x_t) (eq. 7) with
    x0-hat from eq. 4; x0-hat is clipped to [-1, 1] first if asked (iDDPM's convention).
    """
    x0 = eps_to_x0(sched, x_t, t, eps)
    if clip_x0:
        x0 = x0.clamp(-1.0, 1.0)
    mean, _ = q_posterior(sched, x0, x_t, t)
    return mean, reverse_log_variance(sched, t, x_t, variance, v), x0


def sd2015_mean_variance(sched: Schedule, x_t: torch.Tensor, t: torch.Tensor, z_mu: torch.Tensor,
                         z_sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and log-variance of Sohl-Dickstein et al. 2015's reverse kernel, perturbations of the forward kernel's.

    Sigma = sigmoid(z_Sigma + logit beta_t) (eq. 64) and mu = sqrt(1 - beta_t) x_t + sqrt(beta_t) z_mu (the
    reference code's form of eq. 65): at z = 0 the step is the forward kernel N(sqrt(1 - beta_t) x, beta_t I)
    run backwards, which is the exact reverse of a step whose input is N(0, I) (detailed balance). As z_Sigma
    goes to -inf or +inf, Sigma goes to 0 or 1. The last step, x_1 -> x_0 (schedule index 0), is fixed to the
    forward kernel at beta_1 (§2.4.1): there the network's output is ignored.
    """
    first = (t == 0).reshape(-1, *([1] * (x_t.ndim - 1)))
    z_mu, z_sigma = torch.where(first, 0.0, z_mu), torch.where(first, 0.0, z_sigma)
    mean = extract(np.sqrt(sched.alphas), t, x_t) * x_t + extract(np.sqrt(sched.betas), t, x_t) * z_mu
    return mean, torch.nn.functional.logsigmoid(z_sigma + extract(sched.logit_betas, t, z_sigma))


# How a network's output becomes p_theta(x_{t-1} | x_t), its output kind: DDPM's noise prediction (eq. 11; with a v
# output, iDDPM's learned Sigma, eq. 15) or Sohl-Dickstein et al. 2015's perturbation of the forward kernel.
OUTPUT_KINDS = ("eps", "sd2015")


@dataclass(frozen=True)
class ModelOutput:
    """A network's raw output (B, C or 2C, ...) and its kind (`OUTPUT_KINDS`), which says how to read it.

    kind "eps": eps_theta, or eps then iDDPM's v with 2C channels (`split_output`). kind "sd2015": the 2015
    kernel's (z_mu, z_Sigma), 2C channels.
    """

    raw: torch.Tensor
    kind: str

    def double(self) -> ModelOutput:
        """The same output in float64 (the bound's math)."""
        return ModelOutput(self.raw.double(), self.kind)

    def eps(self, x_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(eps, v), v None for an eps-only network: what DDIM reads; ValueError for a kind without eps."""
        if self.kind != "eps":
            raise ValueError(f"a model of output kind {self.kind!r} predicts no eps; only the ancestral sampler "
                             f"(sample_ddpm) reads it")
        return split_output(self.raw, x_t)


@dataclass(frozen=True)
class ReverseModel:
    """The samplers' and the bound's one model contract: (x_t, t) -> ModelOutput, t the original timesteps.

    The one adapter that makes a network of any output kind fit it, as k-diffusion's wrappers do for its
    samplers: `net` maps (x_t, t) -> raw output and knows nothing about schedules or kinds; `kind` comes with
    the network (a checkpoint's config "output"; "eps" unless it says otherwise).
    """

    net: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    kind: str = "eps"

    def __post_init__(self) -> None:
        if self.kind not in OUTPUT_KINDS:
            raise ValueError(f"unknown model output kind {self.kind!r}; allowed: {', '.join(OUTPUT_KINDS)}")

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> ModelOutput:
        return ModelOutput(self.net(x_t, t), self.kind)


def reverse_kernel(sched: Schedule, x_t: torch.Tensor, t: torch.Tensor, out: ModelOutput, *,
                   variance: str = "small", clip_x0: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and log-variance of the Gaussian reverse step p_theta(x_{t-1} | x_t) from a network's output.

    kind "eps": `p_mean_variance` on eps (and v), with the named `variance`. kind "sd2015": the 2015
    kernel on (z_mu, z_Sigma) (`sd2015_mean_variance`); its variance is its own learned one ("learned").
    The one entry point of the ancestral sampler and the bound, so every Gaussian model samples, is
    conditioned and is scored by the same code.
    """
    a, b = split_output(out.raw, x_t)
    if out.kind == "eps":
        mean, log_var, _ = p_mean_variance(sched, x_t, t, a, b, variance=variance, clip_x0=clip_x0)
        return mean, log_var
    if out.kind == "sd2015":
        if b is None or variance != "learned" or clip_x0:
            raise ValueError("the 2015 kernel needs 2C output channels (z_mu, z_Sigma), variance 'learned' and no "
                             "clip_x0")
        return sd2015_mean_variance(sched, x_t, t, a, b)
    raise ValueError(f"unknown model output kind {out.kind!r}; allowed: {', '.join(OUTPUT_KINDS)}")
