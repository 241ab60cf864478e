"""The exact noise predictor of an isotropic Gaussian mixture: an analytic denoiser for tests and ceilings.

Under q(x_t | x0) = N(sqrt(abar_t) x0, (1 - abar_t) I), a mixture sum_k w_k N(m_k, s^2 I) stays a
mixture: q(x_t) = sum_k w_k N(sqrt(abar_t) m_k, (abar_t s^2 + 1 - abar_t) I). The minimiser of
L_simple is eps*(x_t, t) = -sqrt(1 - abar_t) grad log q(x_t) (DDPM eq. 14 at its optimum; Tweedie).
The posterior over components, p(y = k | x_t), is the Bayes-optimal noise-aware classifier of
classifier guidance (ADM §4), with a closed-form gradient.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:  # annotations only: mixture_log_prob (the data row's NLL) needs neither
    from components.networks.runtime import Forward
    from components.math.schedules import Schedule


class _NoisedMixture:
    """q(x_t) = sum_k w_k N(sqrt(abar_t) m_k, (abar_t s^2 + 1 - abar_t) I), in float64, t original timesteps."""

    def __init__(self, sched: Schedule, means: np.ndarray, std: float, weights: np.ndarray | None):
        self.m = torch.as_tensor(means, dtype=torch.float64, device="cpu")  # (K, D): the toy's ground truth, on the host
        w = np.full(len(means), 1 / len(means)) if weights is None else weights
        self.log_w = torch.log(torch.as_tensor(w, dtype=torch.float64, device="cpu"))
        self.abar = torch.as_tensor(sched.alphas_cumprod, dtype=torch.float64, device="cpu")
        self.std = std

    def parts(self, x_t: torch.Tensor, t: torch.Tensor):
        """Per-component logits log w_k + log N(x_t; ...) up to a shared constant (B, K), the offsets
        sqrt(abar) m_k - x_t (B, K, D), the per-component variance (B, 1, 1) and abar (B, 1, 1)."""
        x = x_t.reshape(len(x_t), -1).double()  # (B, D)
        abar = self.abar[t][:, None, None]  # (B, 1, 1)
        var = abar * self.std**2 + 1 - abar
        diff = abar.sqrt() * self.m[None] - x[:, None]  # (B, K, D)
        logits = self.log_w[None] - 0.5 * (diff**2).sum(-1) / var[..., 0]  # shared normaliser cancels
        return logits, diff, var, abar


def mixture_eps_model(sched: Schedule, means: np.ndarray, std: float, weights: np.ndarray | None = None) -> Forward:
    """eps*(x_t, t) for the mixture (means (K, D), isotropic std), on the full schedule `sched`.

    Follows the sampler contract: t are original timesteps (indices into `sched`).
    """
    q = _NoisedMixture(sched, means, std, weights)

    def eps_star(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        logits, diff, var, abar = q.parts(x_t, t)
        resp = torch.softmax(logits, dim=1)[..., None]  # (B, K, 1)
        score = (resp * diff / var).sum(1)  # (B, D)
        return (-(1 - abar[:, 0]).sqrt() * score).to(x_t.dtype).reshape(x_t.shape)

    return eps_star


def mixture_classifier(sched: Schedule, means: np.ndarray, std: float, weights: np.ndarray | None = None):
    """The Bayes-optimal noise-aware classifier: logits of the exact p(y = k | x_t, t) (B, K) under q(x_t).

    Differentiable in x_t, so `guidance.classifier_grad` gives the exact guidance gradient; the
    classifier contract is the trained one's: (x_t, t original timesteps) -> logits.
    """
    q = _NoisedMixture(sched, means, std, weights)

    def logits(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return q.parts(x_t, t)[0]

    return logits


def mixture_log_posterior_grad(sched: Schedule, means: np.ndarray, std: float, x_t: torch.Tensor, t: torch.Tensor,
                               y: torch.Tensor, weights: np.ndarray | None = None) -> torch.Tensor:
    """grad_x log p(y | x_t) in closed form: the component's score minus the mixture's score,
    (sqrt(abar) m_y - x) / var - sum_k p(k | x_t) (sqrt(abar) m_k - x) / var. Float64, x_t's shape."""
    logits, diff, var, _ = _NoisedMixture(sched, means, std, weights).parts(x_t, t)
    resp = torch.softmax(logits, dim=1)[..., None]  # (B, K, 1)
    grad = diff[torch.arange(len(y), device=y.device), y] / var[:, 0] - (resp * diff / var).sum(1)
    return grad.reshape(x_t.shape)


def mixture_log_prob(x: np.ndarray, means: np.ndarray, std: float, weights: np.ndarray | None = None) -> np.ndarray:
    """log q(x0) of the mixture sum_k w_k N(m_k, std^2 I) itself, per sample (N,): the true NLL a bound is compared with."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)  # (N, D)
    m = np.asarray(means, dtype=np.float64)  # (K, D)
    log_w = np.log(np.full(len(m), 1 / len(m)) if weights is None else np.asarray(weights, dtype=np.float64))
    sq = ((x[:, None, :] - m[None]) ** 2).sum(-1)  # (N, K)
    log_comp = log_w[None] - 0.5 * sq / std**2 - 0.5 * x.shape[1] * np.log(2 * np.pi * std**2)
    top = log_comp.max(1, keepdims=True)
    return (top + np.log(np.exp(log_comp - top).sum(1, keepdims=True)))[:, 0]


def mixture_posterior_sample(sched: Schedule, means: np.ndarray, std: float, x_t: torch.Tensor, t: torch.Tensor,
                             generator: torch.Generator, weights: np.ndarray | None = None) -> torch.Tensor:
    """x0 ~ q(x0 | x_t) in closed form, x_t at schedule index t: what an ideal DDGAN generator draws (x_t's shape).

    Bayes' rule per component: the component k ~ p(k | x_t) (the exact classifier's softmax), then
    x0 | x_t, k ~ N(v (m_k / s^2 + sqrt(abar) x_t / (1 - abar)), v I), 1 / v = 1 / s^2 + abar / (1 - abar).
    At abar = 0 (pure noise) this is the mixture itself.
    """
    q = _NoisedMixture(sched, means, std, weights)
    logits, _, _, abar = q.parts(x_t, t)
    k = torch.multinomial(torch.softmax(logits, dim=1), 1, generator=generator)[:, 0]  # (B,)
    abar = abar[:, 0]  # (B, 1)
    v = 1.0 / (1.0 / std**2 + abar / (1.0 - abar))
    mean = v * (q.m[k] / std**2 + abar.sqrt() * x_t.reshape(len(x_t), -1).double() / (1.0 - abar))
    x0 = mean + v.sqrt() * torch.randn(mean.shape, generator=generator, dtype=torch.float64, device=mean.device)
    return x0.to(x_t.dtype).reshape(x_t.shape)


def mixture_posterior_probs(sched: Schedule, means: np.ndarray, std: float, x_t: torch.Tensor, t: torch.Tensor,
                            weights: np.ndarray | None = None) -> torch.Tensor:
    """p(k | x_t) over the components (B, K), float64: which modes q(x0 | x_t) puts its mass on."""
    return torch.softmax(_NoisedMixture(sched, means, std, weights).parts(x_t, t)[0], dim=1)



def delta_conditional(means: np.ndarray, std: float, coordinate: int, value: float
                      ) -> tuple[np.ndarray, np.ndarray, float]:
    """The mixture sum_k (1/K) N(m_k, std^2 I) times a delta on one coordinate, normalised: (weights (K,), centres
    (K, D), std) of the mixture it is again, data units. Component k is reweighted by N(value; m_k[coordinate], std^2)
    and its coordinate pinned at `value`; the others keep std. What a clamped sampler should draw (Sohl-Dickstein et
    al. 2015 §2.5)."""
    m = np.asarray(means, dtype=np.float64).reshape(len(means), -1)
    centres = m.copy()
    centres[:, coordinate] = value
    return _normalised(-0.5 * (value - m[:, coordinate]) ** 2 / std**2), centres, float(std)


def bump_conditional(means: np.ndarray, std: float, center: np.ndarray, bump_std: float
                     ) -> tuple[np.ndarray, np.ndarray, float]:
    """The mixture times a Gaussian bump N(x; c, tau^2 I), normalised (a product of Gaussians): component k is
    reweighted by N(c; m_k, (std^2 + tau^2) I), centred at (tau^2 m_k + std^2 c) / (std^2 + tau^2) and narrowed to
    std tau / sqrt(std^2 + tau^2). Returns (weights (K,), centres (K, D), std), data units."""
    m = np.asarray(means, dtype=np.float64).reshape(len(means), -1)
    c, tau2 = np.asarray(center, dtype=np.float64), bump_std**2
    log_w = -0.5 * ((c - m) ** 2).sum(1) / (std**2 + tau2)
    return _normalised(log_w), (tau2 * m + std**2 * c) / (std**2 + tau2), float(std * np.sqrt(tau2 / (std**2 + tau2)))


def _normalised(log_w: np.ndarray) -> np.ndarray:
    w = np.exp(log_w - log_w.max())
    return w / w.sum()
