"""Schedules, respacing and trajectories against their closed forms."""

import numpy as np
import pytest

from components.math.schedules import (
    cosine_alpha_bar, cosine_betas, linear_betas, make_schedule, make_trajectory, respace,
)


def test_linear_schedule_is_ddpm_float64():
    b = linear_betas(1000)
    assert b.dtype == np.float64
    assert b[0] == pytest.approx(1e-4) and b[-1] == pytest.approx(0.02)
    assert np.allclose(np.diff(b), (0.02 - 1e-4) / 999)
    # DDPM's abar_999 (REFERENCE §1): the prior is not exactly N(0, I).
    assert make_schedule("linear", 1000).alphas_cumprod[-1] == pytest.approx(4.0358e-5, rel=1e-4)


@pytest.mark.parametrize("T", [4, 100, 1000, 4000])
def test_cosine_schedule_matches_its_formula(T):
    betas = cosine_betas(T)
    abar = np.cumprod(1 - betas)
    f = cosine_alpha_bar(np.arange(1, T + 1) / T) / cosine_alpha_bar(0.0)
    unclipped = np.cumprod(betas < 0.999).astype(bool)  # until the first clipped beta, abar follows f exactly
    assert np.allclose(abar[unclipped], f[unclipped], rtol=1e-12, atol=0)
    assert betas.max() <= 0.999


def test_cosine_endpoints_t4000():
    b = cosine_betas(4000)
    assert b[0] == pytest.approx(9.8658e-6, rel=1e-4)
    assert b[-1] == 0.999


def test_ddgan_schedule_is_the_papers():
    """DDGAN's discretised VP at T = 4 (REFERENCE §5: beta = 0.47826, 0.84921, 0.95642, 0.98740), as make_schedule
    builds it."""
    assert np.allclose(make_schedule("ddgan_vp", 4).betas, [0.47826, 0.84921, 0.95642, 0.98740], atol=5e-6)


def test_logsnr_linear_is_even_in_log_snr():
    """abar_i = sigmoid(lambda_i), lambda from 3.5 down to -8 in T even steps; one step sits at -8."""
    for T in (2, 4, 7):
        abar = make_schedule("logsnr_linear", T).alphas_cumprod
        assert np.allclose(np.log(abar / (1 - abar)), np.linspace(3.5, -8, T))
    assert make_schedule("logsnr_linear", 1).alphas_cumprod == pytest.approx([1 / (1 + np.exp(8))])


def test_unknown_schedule_is_rejected():
    with pytest.raises(ValueError, match="allowed: linear, cosine, ddgan_vp, logsnr_linear"):
        make_schedule("sigmoid", 10)


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("traj,steps", [("uniform", 50), ("linspace", 10), ("quadratic", 100), ("uniform", 4)])
def test_respaced_alpha_bar_equals_original_at_kept_steps(name, traj, steps):
    full = make_schedule(name, 1000)
    keep = make_trajectory(traj, 1000, steps)
    sub = respace(full, keep)
    assert len(sub) == steps
    assert np.array_equal(sub.timesteps, keep)
    # rtol 1e-9: the cosine schedule ends at abar ~ 2e-9, where 1 - abar_i / abar_{i-1} loses float64 digits
    assert np.allclose(sub.alphas_cumprod, full.alphas_cumprod[keep], rtol=1e-9, atol=0)


def test_respacing_everything_is_identity():
    full = make_schedule("linear", 100)
    assert np.allclose(respace(full, np.arange(100)).betas, full.betas, rtol=1e-12)


def test_trajectories():
    assert np.array_equal(make_trajectory("uniform", 1000, 50), np.arange(0, 1000, 20))  # iDDPM's "ddim50"
    assert np.array_equal(make_trajectory("uniform", 1000, 4), [0, 250, 500, 750])
    lin = make_trajectory("linspace", 1000, 4)
    assert lin[0] == 0 and lin[-1] == 999 and len(lin) == 4
    quad = make_trajectory("quadratic", 1000, 100)
    assert len(quad) == 100 and np.all(np.diff(quad) > 0) and quad[-1] < 1000
    # away from the bumped start it is DDIM's (linspace(0, sqrt(0.8 T), S))^2, ending at 0.8 T
    assert abs(quad[-1] - 800) <= 1 and quad[50] == int((50 / 99 * np.sqrt(800)) ** 2)


@pytest.mark.parametrize("steps", [0, -3, 1001])
def test_trajectory_steps_out_of_range(steps):
    with pytest.raises(ValueError, match="steps must be in"):
        make_trajectory("uniform", 1000, steps)
