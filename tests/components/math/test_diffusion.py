"""Diffusion math against closed forms (Bayes' rule for the posterior, the forward marginal)."""

import numpy as np
import pytest
import torch

from components.math.diffusion import (
    ddim_sigma, eps_to_x0, q_posterior, q_sample, reverse_log_variance, split_output, x0_to_eps,
)
from components.math.schedules import make_schedule, make_trajectory, respace

SCHEDULES = [make_schedule("linear", 1000), make_schedule("cosine", 1000),
             respace(make_schedule("linear", 1000), make_trajectory("uniform", 1000, 50))]


@pytest.mark.parametrize("sched", SCHEDULES)
@pytest.mark.parametrize("shape", [(64, 2), (16, 3, 4, 4)])
def test_eps_x0_round_trip(sched, shape):
    g = torch.Generator().manual_seed(0)
    x_t, eps = torch.randn(shape, generator=g, dtype=torch.float64), torch.randn(shape, generator=g, dtype=torch.float64)
    t = torch.randint(len(sched), (shape[0],), generator=g)
    assert torch.allclose(x0_to_eps(sched, x_t, t, eps_to_x0(sched, x_t, t, eps)), eps, atol=1e-9)


@pytest.mark.parametrize("sched", SCHEDULES)
def test_posterior_is_bayes_rule(sched):
    """q(x_{t-1}|x_t,x0) ∝ N(x_t; sqrt(alpha_t) x_{t-1}, beta_t) N(x_{t-1}; sqrt(abar_{t-1}) x0, 1-abar_{t-1})."""
    t = torch.arange(1, len(sched))
    x0 = torch.randn(len(t), 2, dtype=torch.float64)
    x_t = torch.randn(len(t), 2, dtype=torch.float64)
    mean, var = q_posterior(sched, x0, x_t, t)
    a, b = sched.alphas[1:, None], sched.betas[1:, None]
    abar_prev = sched.alphas_cumprod_prev[1:, None]
    precision = a / b + 1 / (1 - abar_prev)
    beta_tilde = (1 - abar_prev) / (1 - sched.alphas_cumprod[1:, None]) * b  # DDPM eq. 7
    assert np.allclose(var.numpy(), 1 / precision, rtol=1e-10)
    assert np.allclose(var.numpy(), beta_tilde, rtol=1e-10)
    bayes_mean = (np.sqrt(a) / b * x_t.numpy() + np.sqrt(abar_prev) / (1 - abar_prev) * x0.numpy()) / precision
    assert np.allclose(mean.numpy(), bayes_mean, rtol=1e-8, atol=1e-10)


def test_posterior_at_t0_returns_x0():
    sched = SCHEDULES[0]
    x0, x_t = torch.randn(8, 2, dtype=torch.float64), torch.randn(8, 2, dtype=torch.float64)
    mean, var = q_posterior(sched, x0, x_t, torch.zeros(8, dtype=torch.long))
    assert torch.allclose(mean, x0) and torch.all(var == 0)


def test_q_sample_marginal_moments():
    sched = SCHEDULES[0]
    g = torch.Generator().manual_seed(1)
    n, t = 200_000, 300
    x0 = torch.full((n, 1), 1.5, dtype=torch.float64)
    x_t = q_sample(sched, x0, torch.full((n,), t), torch.randn(n, 1, generator=g, dtype=torch.float64))
    abar = sched.alphas_cumprod[t]
    assert x_t.mean().item() == pytest.approx(np.sqrt(abar) * 1.5, abs=0.01)
    assert x_t.var().item() == pytest.approx(1 - abar, rel=0.01)


@pytest.mark.parametrize("sched", SCHEDULES)
def test_ddim_eta1_has_ddpm_posterior_variance(sched):
    assert np.allclose(ddim_sigma(sched, 1.0) ** 2, sched.posterior_variance, rtol=1e-10, atol=1e-15)
    assert np.all(ddim_sigma(sched, 0.0) == 0)


@pytest.mark.parametrize("sched", SCHEDULES)
def test_learned_range_hits_beta_tilde_and_beta_at_its_ends(sched):
    """iDDPM eq. 15 on this schedule's own (respaced) tables: v = -1 gives beta-tilde (clipped), v = +1 gives beta."""
    t = torch.arange(len(sched))
    like = torch.zeros(len(t), 2, dtype=torch.float64)
    lo = reverse_log_variance(sched, t, like, "learned", torch.full_like(like, -1.0))
    hi = reverse_log_variance(sched, t, like, "learned", torch.full_like(like, 1.0))
    mid = reverse_log_variance(sched, t, like, "learned", torch.zeros_like(like))
    assert torch.allclose(lo, reverse_log_variance(sched, t, like, "small"))
    assert torch.allclose(lo[1:, 0], torch.log(torch.from_numpy(sched.posterior_variance[1:])))
    assert lo[0, 0] == pytest.approx(np.log(sched.posterior_variance[1]))  # beta-tilde_0 = 0 is clipped
    assert torch.allclose(hi, reverse_log_variance(sched, t, like, "large"))
    assert torch.allclose(hi[:, 0], torch.log(torch.from_numpy(sched.betas)))
    assert torch.allclose(mid, (lo + hi) / 2)  # geometric mean: where a zero-initialised v head starts


def test_respaced_learned_range_uses_the_respaced_betas():
    full = make_schedule("linear", 1000)
    sched = respace(full, make_trajectory("uniform", 1000, 10))
    t = torch.tensor([5])
    like = torch.zeros(1, 1, dtype=torch.float64)
    hi = reverse_log_variance(sched, t, like, "learned", torch.ones_like(like))
    abar = full.alphas_cumprod
    assert float(hi) == pytest.approx(np.log(1 - abar[500] / abar[400]))  # beta of the 400 -> 500 jump, not beta_500


def test_split_output_is_eps_or_eps_and_v():
    x = torch.zeros(4, 3, 5, 5)
    eps, v = split_output(torch.arange(4 * 6 * 25.0).reshape(4, 6, 5, 5), x)
    assert eps.shape == v.shape == x.shape and float(v[0, 0, 0, 0]) == 75.0
    assert split_output(torch.ones(4, 3, 5, 5), x)[1] is None
    with pytest.raises(ValueError, match="expected 3 .* or 6"):
        split_output(torch.ones(4, 4, 5, 5), x)
