"""Noise schedules as float64 tables, respacing, and timestep trajectories.

A `Schedule` is an immutable table over its own indices i = 0..len-1. `timesteps[i]` is
the original training timestep that index i stands for, so a respaced schedule can be
handed to the same math and samplers as the full one, and the network is always called
with the timestep it was trained on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np


@dataclass(frozen=True, eq=False)
class Schedule:
    """Betas (float64, (S,)) and the original timestep of each index (int64, (S,))."""

    betas: np.ndarray
    timesteps: np.ndarray | None = None  # None: 0..S-1 (an unrespaced schedule)

    def __post_init__(self) -> None:
        betas = np.asarray(self.betas, dtype=np.float64)
        if betas.ndim != 1 or len(betas) == 0:
            raise ValueError("betas must be a non-empty 1-D array")
        if not np.all((betas > 0) & (betas <= 1)):
            raise ValueError("betas must lie in (0, 1]")
        ts = np.arange(len(betas)) if self.timesteps is None else self.timesteps
        ts = np.asarray(ts, dtype=np.int64)
        if ts.shape != betas.shape or np.any(np.diff(ts) <= 0):
            raise ValueError("timesteps must be strictly increasing, one per beta")
        object.__setattr__(self, "betas", betas)
        object.__setattr__(self, "timesteps", ts)

    def __len__(self) -> int:
        return len(self.betas)

    @cached_property
    def log_betas(self) -> np.ndarray:
        return np.log(self.betas)

    @cached_property
    def logit_betas(self) -> np.ndarray:
        """logit(beta_t) = log beta_t - log(1 - beta_t); +inf where beta_t = 1 (Sohl-Dickstein et al. 2015, eq. 64)."""
        with np.errstate(divide="ignore"):
            return self.log_betas - np.log1p(-self.betas)

    @cached_property
    def alphas(self) -> np.ndarray:
        return 1.0 - self.betas

    @cached_property
    def alphas_cumprod(self) -> np.ndarray:
        """abar_t = prod_{s<=t} alpha_s (DDPM eq. 4)."""
        return np.cumprod(self.alphas)

    @cached_property
    def sqrt_alphas_cumprod(self) -> np.ndarray:
        return np.sqrt(self.alphas_cumprod)

    @cached_property
    def sqrt_one_minus_alphas_cumprod(self) -> np.ndarray:
        return np.sqrt(1.0 - self.alphas_cumprod)

    @cached_property
    def sqrt_recip_alphas_cumprod(self) -> np.ndarray:
        return 1.0 / np.sqrt(self.alphas_cumprod)

    @cached_property
    def sqrt_recip_one_minus_alphas_cumprod(self) -> np.ndarray:
        return 1.0 / np.sqrt(1.0 - self.alphas_cumprod)

    @cached_property
    def alphas_cumprod_prev(self) -> np.ndarray:
        """abar_{t-1}, with abar_{-1} = 1 (the step after t=0 lands on clean data)."""
        return np.append(1.0, self.alphas_cumprod[:-1])

    @cached_property
    def posterior_variance(self) -> np.ndarray:
        """beta-tilde_t = (1 - abar_{t-1}) / (1 - abar_t) * beta_t (DDPM eq. 7)."""
        return (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod) * self.betas

    @cached_property
    def posterior_log_variance_clipped(self) -> np.ndarray:
        """log beta-tilde_t with t=0 replaced by beta-tilde_1 (beta-tilde_0 = 0); iDDPM's "clipped" lower end."""
        pv = self.posterior_variance
        first = pv[1] if len(pv) > 1 else self.betas[0]  # a 1-step chain has no beta-tilde_1
        return np.log(np.append(first, pv[1:]))

    @cached_property
    def fixed_large_log_variance(self) -> np.ndarray:
        """log beta_t, with t=0 replaced by log beta-tilde_1: DDPM's "large" choice Sigma_t = beta_t (§3.2) as DDPM's
        and iDDPM's code tabulate it (improved-diffusion: log(append(posterior_variance[1], betas[1:]))).

        At t = 0 the reverse step is the decoder p(x0 | x1), whose variance the code sets "to get a better decoder
        log likelihood": beta-tilde_1 is about 5.5e-5 on the linear schedule, against beta_0 = 1e-4. The bound on
        8-bit images uses it (`likelihood.decoder_log_variance`). A 1-step chain keeps beta_0.
        """
        first = self.posterior_variance[1] if len(self) > 1 else self.betas[0]
        return np.log(np.append(first, self.betas[1:]))

    @cached_property
    def posterior_mean_coef1(self) -> np.ndarray:
        """Coefficient of x0 in mu-tilde (DDPM eq. 7)."""
        return np.sqrt(self.alphas_cumprod_prev) * self.betas / (1.0 - self.alphas_cumprod)

    @cached_property
    def posterior_mean_coef2(self) -> np.ndarray:
        """Coefficient of x_t in mu-tilde (DDPM eq. 7)."""
        return np.sqrt(self.alphas) * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)


# --- beta schedules ---------------------------------------------------------------------


def linear_betas(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """DDPM's linear schedule, scaled to T steps the way the reference code does (1e-4..0.02 at T=1000)."""
    scale = 1000.0 / T
    return np.linspace(scale * beta_start, scale * beta_end, T, dtype=np.float64)


def cosine_alpha_bar(t: np.ndarray | float, s: float = 0.008) -> np.ndarray:
    """iDDPM eq. 17's f(t) = cos^2(((t + s) / (1 + s)) * pi / 2), for t in [0, 1]."""
    return np.cos((np.asarray(t, dtype=np.float64) + s) / (1 + s) * math.pi / 2) ** 2


def cosine_betas(T: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """iDDPM cosine schedule: beta_i = min(1 - abar((i+1)/T) / abar(i/T), 0.999)."""
    i = np.arange(T, dtype=np.float64)
    ratio = cosine_alpha_bar((i + 1) / T, s) / cosine_alpha_bar(i / T, s)
    return np.minimum(1.0 - ratio, max_beta)


def ddgan_vp_betas(T: int, beta_min: float = 0.1, beta_max: float = 20.0, eps: float = 1e-3) -> np.ndarray:
    """DDGAN's discretised VP SDE: abar(t) = exp(-t^2 (b_max - b_min)/2 - t b_min) on t_i = i/T (1-eps) + eps."""
    t = np.arange(T + 1, dtype=np.float64) / T * (1 - eps) + eps
    log_abar = -0.5 * t**2 * (beta_max - beta_min) - t * beta_min
    return 1.0 - np.exp(log_abar[1:] - log_abar[:-1])


def logsnr_linear_betas(T: int, logsnr_max: float = 3.5, logsnr_min: float = -8.0) -> np.ndarray:
    """T steps evenly spaced in log-SNR, lambda_i = log(abar_i / (1 - abar_i)) from logsnr_max down to logsnr_min.

    abar_i = sigmoid(lambda_i); a single step (T = 1) sits at logsnr_min. At the defaults the first step
    keeps abar_0 = 0.971 (noise std 0.17 in unit-variance units) for any T > 1, so a few-step sampler's
    last denoising step is nearly unimodal on data whose modes lie further apart than that, the premise
    DDGAN's parametrisation rests on (Xiao et al. 2022, §3.1); the last of them, abar = 3.4e-4, is
    almost pure noise.
    """
    lam = np.linspace(logsnr_max, logsnr_min, T) if T > 1 else np.array([logsnr_min], dtype=np.float64)
    abar = 1.0 / (1.0 + np.exp(-lam))
    return 1.0 - abar / np.append(1.0, abar[:-1])


def sd2015_betas(T: int) -> np.ndarray:
    """beta_t = 1 / (T - t + 1) for t = 1..T: Sohl-Dickstein et al. 2015's fixed schedule (§2.4.1, footnote).

    The paper learns beta_2..beta_T and notes that this schedule, its binomial diffusion's, is just as
    effective. Then abar_t = prod_s (T - s) / (T - s + 1) = 1 - t / T: linear in t, beta_1 = 1 / T, and
    beta_T = 1, so abar_T = 0 and x_T is exactly N(0, I) (DDPM's code calls it "jsd").
    """
    return 1.0 / np.arange(T, 0, -1, dtype=np.float64)


SCHEDULES = {"linear": linear_betas, "cosine": cosine_betas, "ddgan_vp": ddgan_vp_betas,
             "logsnr_linear": logsnr_linear_betas, "sd2015": sd2015_betas}


def make_schedule(name: str, T: int) -> Schedule:
    """The named schedule over T steps."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; allowed: {', '.join(SCHEDULES)}")
    return Schedule(SCHEDULES[name](T))


# --- respacing --------------------------------------------------------------------------


def respace(sched: Schedule, keep: np.ndarray) -> Schedule:
    """Keep a subset S of timesteps: beta_i = 1 - abar_{S_i} / abar_{S_{i-1}} (iDDPM respacing).

    The respaced alpha-bar equals the original at every kept step, so q(x_t | x0) is unchanged
    there and the network can be called at its original timesteps (`timesteps` of the result).
    """
    keep = np.asarray(keep, dtype=np.int64)
    if keep.ndim != 1 or len(keep) == 0 or keep[0] < 0 or keep[-1] >= len(sched) or np.any(np.diff(keep) <= 0):
        raise ValueError(f"respacing needs strictly increasing timesteps in [0, {len(sched)})")
    abar = sched.alphas_cumprod[keep]
    betas = 1.0 - abar / np.append(1.0, abar[:-1])
    return Schedule(betas, sched.timesteps[keep])


# --- timestep trajectories --------------------------------------------------------------


def uniform_trajectory(T: int, steps: int) -> np.ndarray:
    """DDIM's uniform skip: range(0, T, stride) with the smallest integer stride that gives exactly `steps` entries
    (improved-diffusion's rule: "ddim30" at T = 1000 is stride 34); where no stride does, floor(i T / steps), the
    nearest to one stride, so every step count in [1, T] has a uniform trajectory."""
    for stride in range(-(-T // steps), T + 1):
        if -(-T // stride) == steps:
            return np.arange(0, T, stride)
        if -(-T // stride) < steps:
            break
    return np.arange(steps) * T // steps


def linspace_trajectory(T: int, steps: int) -> np.ndarray:
    """iDDPM's section respacing: `steps` rounded points spread over [0, T-1], both ends included."""
    if steps == 1:
        return np.array([T - 1])
    return np.round(np.linspace(0, T - 1, steps)).astype(np.int64)


def quadratic_trajectory(T: int, steps: int) -> np.ndarray:
    """DDIM's quadratic trajectory (linspace(0, sqrt(0.8 T), S))^2, made strictly increasing.

    The original truncates to int and repeats early steps (0, 0, 0, 0, 1, ...) for large S; a
    repeated step is a zero-length step, so each is bumped to previous + 1 to keep S real steps.
    """
    ts = (np.linspace(0, math.sqrt(0.8 * T), steps) ** 2).astype(np.int64)
    for i in range(1, len(ts)):
        ts[i] = max(ts[i], ts[i - 1] + 1)
    if ts[-1] >= T:
        raise ValueError(f"quadratic trajectory cannot fit {steps} distinct steps in T={T}")
    return ts


TRAJECTORIES = {"uniform": uniform_trajectory, "linspace": linspace_trajectory, "quadratic": quadratic_trajectory}


def make_trajectory(name: str, T: int, steps: int) -> np.ndarray:
    """The named trajectory of `steps` timesteps out of T (increasing order)."""
    if name not in TRAJECTORIES:
        raise ValueError(f"unknown trajectory {name!r}; allowed: {', '.join(TRAJECTORIES)}")
    if not 0 < steps <= T:
        raise ValueError(f"steps must be in [1, {T}], got {steps}")
    return TRAJECTORIES[name](T, steps)
