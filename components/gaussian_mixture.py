"""The exact noise predictor of an isotropic Gaussian mixture: an analytic denoiser for tests and ceilings.

Under q(x_t | x0) = N(sqrt(abar_t) x0, (1 - abar_t) I), a mixture sum_k w_k N(m_k, s^2 I) stays a
mixture: q(x_t) = sum_k w_k N(sqrt(abar_t) m_k, (abar_t s^2 + 1 - abar_t) I). The minimiser of
L_simple is eps*(x_t, t) = -sqrt(1 - abar_t) grad log q(x_t) (DDPM eq. 14 at its optimum; Tweedie).
"""

from __future__ import annotations

import numpy as np
import torch

from components.samplers import EpsModel
from components.schedules import Schedule


def mixture_eps_model(sched: Schedule, means: np.ndarray, std: float, weights: np.ndarray | None = None) -> EpsModel:
    """eps*(x_t, t) for the mixture (means (K, D), isotropic std), on the full schedule `sched`.

    Follows the sampler contract: t are original timesteps (indices into `sched`).
    """
    m = torch.as_tensor(means, dtype=torch.float64)  # (K, D)
    log_w = torch.log(torch.as_tensor(np.full(len(means), 1 / len(means)) if weights is None else weights,
                                      dtype=torch.float64))
    abar_table = torch.as_tensor(sched.alphas_cumprod, dtype=torch.float64)

    def eps_star(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x = x_t.reshape(len(x_t), -1).double()  # (B, D)
        abar = abar_table[t][:, None, None]  # (B, 1, 1)
        var = abar * std**2 + 1 - abar  # (B, 1, 1) per-component variance of x_t
        diff = abar.sqrt() * m[None] - x[:, None]  # (B, K, D)
        logits = log_w[None] - 0.5 * (diff**2).sum(-1) / var[..., 0]  # (B, K); shared normaliser cancels
        resp = torch.softmax(logits, dim=1)[..., None]  # (B, K, 1)
        score = (resp * diff / var).sum(1)  # (B, D)
        return (-(1 - abar[:, 0]).sqrt() * score).to(x_t.dtype).reshape(x_t.shape)

    return eps_star


def mixture_log_prob(x: np.ndarray, means: np.ndarray, std: float, weights: np.ndarray | None = None) -> np.ndarray:
    """log q(x0) of the mixture sum_k w_k N(m_k, std^2 I) itself, per sample (N,): the true NLL a bound is compared with."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)  # (N, D)
    m = np.asarray(means, dtype=np.float64)  # (K, D)
    log_w = np.log(np.full(len(m), 1 / len(m)) if weights is None else np.asarray(weights, dtype=np.float64))
    sq = ((x[:, None, :] - m[None]) ** 2).sum(-1)  # (N, K)
    log_comp = log_w[None] - 0.5 * sq / std**2 - 0.5 * x.shape[1] * np.log(2 * np.pi * std**2)
    top = log_comp.max(1, keepdims=True)
    return (top + np.log(np.exp(log_comp - top).sum(1, keepdims=True)))[:, 0]
