"""The variational bound against closed forms: normal_kl, L_prior, the decoders, and Gaussian data.

For data x0 ~ N(0, s^2 I) the exact eps* is known (a one-component mixture), so the bound of the
optimal model can be compared with the true NLL, 0.5 log(2 pi s^2) + x^2 / (2 s^2) per dimension.
"""

import math

import numpy as np
import pytest
import torch

from components.data.gaussian_mixture import mixture_eps_model, mixture_log_prob
from components.math.diffusion import ReverseModel, q_sample, reverse_log_variance
from components.math.likelihood import (
    bound_per_dim, decoder_log_variance, discretized_gaussian_log_likelihood, gaussian_log_likelihood, normal_kl,
    prior_kl, variational_bound, vlb_term,
)
from components.math.schedules import make_schedule, make_trajectory, respace

DT = torch.float64


def test_normal_kl_matches_monte_carlo():
    g = torch.Generator().manual_seed(0)
    m1, lv1, m2, lv2 = (torch.tensor(v, dtype=DT) for v in (0.3, math.log(0.5), -0.4, math.log(2.0)))
    x = m1 + torch.exp(0.5 * lv1) * torch.randn(400_000, generator=g, dtype=DT)
    log_ratio = gaussian_log_likelihood(x, m1, lv1) - gaussian_log_likelihood(x, m2, lv2)
    se = log_ratio.std() / math.sqrt(len(x))
    assert abs(log_ratio.mean() - normal_kl(m1, lv1, m2, lv2)) < 4 * se
    assert normal_kl(m1, lv1, m1, lv1) == 0


def test_prior_term_matches_its_formula():
    sched = make_schedule("linear", 1000)
    x0 = torch.tensor([[0.5, -1.0], [2.0, 0.0]], dtype=DT)
    a = sched.alphas_cumprod[-1]
    # KL(N(sqrt(a) x0, (1 - a)) || N(0, 1)) per dimension, summed
    expected = 0.5 * ((1 - a) + a * x0**2 - 1 - math.log(1 - a)).sum(1)
    assert torch.allclose(prior_kl(sched, x0), expected)
    assert (prior_kl(sched, x0) < 1e-3).all()  # abar_T ~ 4e-5: q(x_T) is nearly N(0, I)


@pytest.mark.parametrize("mean,logvar", [(0.0, math.log(0.1**2)), (0.9, math.log(0.3**2)), (-1.3, math.log(0.01**2))])
def test_discretized_decoder_is_a_distribution_over_the_256_values(mean, logvar):
    x = torch.linspace(-1, 1, 256, dtype=DT)
    log_p = discretized_gaussian_log_likelihood(x, torch.full_like(x, mean), torch.full_like(x, logvar))
    assert torch.exp(log_p).sum() == pytest.approx(1.0, abs=1e-9)


def test_discretized_decoder_is_density_times_bin_width_for_a_wide_gaussian():
    x = torch.linspace(-1, 1, 256, dtype=DT)[100:150]
    mean, logvar = torch.full_like(x, 0.1), torch.full_like(x, math.log(0.5**2))
    log_p = discretized_gaussian_log_likelihood(x, mean, logvar)
    approx = gaussian_log_likelihood(x, mean, logvar) + math.log(2 / 255)
    assert torch.allclose(log_p, approx, atol=1e-4)


def test_discretized_decoder_stays_finite_far_in_the_tails():
    x = torch.tensor([0.5, -0.5], dtype=DT)
    log_p = discretized_gaussian_log_likelihood(x, torch.tensor([-0.5, 0.5], dtype=DT), torch.full((2,), math.log(1e-4), dtype=DT))
    assert torch.isfinite(log_p).all() and (log_p < -1000).all()


D, S = 32, 0.5  # x0 ~ N(0, S^2 I_D); 32 dimensions average out most of the per-sample Monte-Carlo noise


def _gaussian_bound_gap(T: int, variance: str, steps: int | None = None, n: int = 4000) -> torch.Tensor:
    """Per-sample (bound - true NLL) in nats/dim for x0 ~ N(0, S^2 I_D) under the exact eps*."""
    full = make_schedule("linear", T)
    sched = full if steps is None else respace(full, make_trajectory("uniform", T, steps))
    g = torch.Generator().manual_seed(1)
    x0 = S * torch.randn(n, D, generator=g, dtype=DT)
    out = variational_bound(ReverseModel(mixture_eps_model(full, np.zeros((1, D)), S)), sched, x0, variance=variance, generator=g)
    true_nll = -torch.from_numpy(mixture_log_prob(x0.numpy(), np.zeros((1, D)), S)) / D
    return bound_per_dim(out["total"], D, "continuous") - true_nll


def _mean_se(gap: torch.Tensor) -> tuple[float, float]:
    return float(gap.mean()), float(gap.std()) / math.sqrt(len(gap))


def test_bound_of_the_exact_model_is_above_the_true_nll_and_tightens_with_T():
    """With Sigma = beta_t, optimal for Gaussian data (DDPM §3.2), the gap closes as T grows."""
    gaps = {T: _mean_se(_gaussian_bound_gap(T, "large")) for T in (50, 200, 1000)}
    print("\nlarge: (bound - NLL, s.e.) in nats/dim by T:", {T: (round(m, 4), round(se, 4)) for T, (m, se) in gaps.items()})
    for T, (m, se) in gaps.items():
        assert m > -3 * se, gaps  # a bound, up to Monte-Carlo error
    (m50, se50), (m1000, se1000) = gaps[50], gaps[1000]
    assert m50 > m1000 + 3 * math.hypot(se50, se1000), gaps
    assert abs(m1000) < 3 * se1000 + 0.005, gaps


def test_beta_tilde_leaves_a_gap_that_more_steps_do_not_close():
    """Sigma = beta-tilde_t is optimal for a point mass, not for smooth data: at small t it is half the true
    reverse variance, and that mismatch sits at the first few indices whatever T is."""
    small, large = (_mean_se(_gaussian_bound_gap(1000, v)) for v in ("small", "large"))
    print(f"\nT=1000 (bound - NLL, s.e.) in nats/dim: small {small[0]:.4f} ({small[1]:.4f}), large {large[0]:.4f} ({large[1]:.4f})")
    assert small[0] > large[0] + 0.3, (small, large)


def test_a_respaced_chain_is_a_looser_bound():
    coarse, full = (_mean_se(_gaussian_bound_gap(1000, "large", steps=s)) for s in (10, None))
    assert coarse[0] > full[0] + 3 * math.hypot(coarse[1], full[1]), (coarse, full)


def test_bound_in_data_units_adds_the_log_jacobian():
    total = torch.tensor([4.0, 6.0], dtype=DT)  # nats over 2 dims, model space z = x * 0.5
    assert torch.allclose(bound_per_dim(total, 2, "continuous", scale=0.5), total / 2 - math.log(0.5))
    assert torch.allclose(bound_per_dim(total, 2, "discretized"), total / (2 * math.log(2)))


def test_the_fixed_large_bound_on_images_uses_the_papers_decoder_variance():
    """On 8-bit images the bound's t = 0 term under fixed-large variance is the discretized decoder at
    log(append(posterior_variance[1], betas[1:]))[0] = log beta-tilde_1, DDPM's and improved-diffusion's code;
    every other term, and every term of the continuous (toy) decoder, keeps log beta_t."""
    sched = make_schedule("linear", 1000)
    betas, abar = sched.betas, np.cumprod(1 - sched.betas)  # improved-diffusion's table, from the betas alone
    code_table = np.log(np.append(betas[1] * (1 - abar[0]) / (1 - abar[1]), betas[1:]))
    assert np.allclose(sched.fixed_large_log_variance, code_table, rtol=1e-12, atol=0)
    g = torch.Generator().manual_seed(0)
    x0 = (torch.randint(0, 256, (6, 1, 2, 2), generator=g).double() / 127.5 - 1)  # 8-bit pixels in [-1, 1]
    t = torch.tensor([0, 0, 0, 5, 5, 5])
    mean = x0 + 0.01 * torch.randn(x0.shape, generator=g, dtype=DT)
    log_var = reverse_log_variance(sched, t, x0, "large")
    images = decoder_log_variance(sched, t, log_var, variance="large", decoder="discretized")
    assert torch.allclose(images[:3].flatten(), torch.full((3,), code_table[0], dtype=DT))
    assert torch.equal(images[3:], log_var[3:]) and torch.allclose(log_var[:3].flatten(), torch.full((3,), np.log(betas[0]), dtype=DT))
    assert torch.equal(decoder_log_variance(sched, t, log_var, variance="large", decoder="continuous"), log_var)
    assert torch.equal(decoder_log_variance(sched, t, log_var, variance="small", decoder="discretized"), log_var)
    nll = -discretized_gaussian_log_likelihood(x0[:3], mean[:3], torch.full_like(x0[:3], code_table[0])).flatten(1).sum(1)
    x_t = q_sample(sched, x0, t, torch.zeros_like(x0))
    assert torch.allclose(vlb_term(sched, x0, x_t, t, mean, images, "discretized")[:3], nll)
