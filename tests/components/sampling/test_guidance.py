"""Classifier guidance (ADM §4): the gradient function, the two combination rules, and the mixture's exact case."""

import numpy as np
import pytest
import torch

from components.data.gaussians25 import gaussians25_means
from components.math.diffusion import ReverseModel
from components.data.gaussian_mixture import mixture_classifier, mixture_eps_model, mixture_log_posterior_grad
from components.sampling.guidance import classifier_grad
from components.scoring.metrics import nearest_mode, target_hit_rate
from components.networks.mlp import make_classifier, make_network
from components.sampling.samplers import sample_ddim, sample_ddpm
from components.math.schedules import make_schedule, make_trajectory, respace
from pipelines.stages.sample import guide_for

STD = 0.05
SCALE = 1 / np.sqrt(8 + STD**2)  # the toy's model-space map (components/data/gaussians25.py)
MEANS = gaussians25_means()


def test_classifier_grad_matches_finite_differences():
    """s * grad_x log p_phi(y | x_t, t) of a random classifier, against central differences of log_softmax[y]."""
    torch.manual_seed(0)
    net = make_classifier("mlp", (2,), 25, width=32, depth=2, temb_dim=16).double().eval()
    x = torch.randn(16, 2, dtype=torch.float64)
    t = torch.randint(1000, (16,))
    y = torch.randint(25, (16,))
    s = 2.5
    grad = classifier_grad(net, y, s)(x, t)

    def log_p(z):
        return torch.log_softmax(net(z, t), -1)[torch.arange(16), y]

    h = 1e-6
    fd = torch.stack([(log_p(x + h * e) - log_p(x - h * e)) / (2 * h) for e in torch.eye(2, dtype=torch.float64)], 1)
    assert grad.shape == x.shape and not grad.requires_grad
    assert torch.allclose(grad, s * fd, rtol=1e-6, atol=1e-8)
    assert grad.abs().max() > 1e-3  # a gradient that is not trivially zero


def test_exact_classifier_grad_is_the_closed_form_posterior_score():
    """Autograd through the exact p(y | x_t) equals the closed form: the component's score minus the mixture's."""
    sched = make_schedule("linear", 1000)
    means, std = MEANS * SCALE, STD * SCALE
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 2, generator=g, dtype=torch.float64)
    t = torch.randint(0, 1000, (64,), generator=g)
    y = torch.randint(25, (64,), generator=g)
    auto = classifier_grad(mixture_classifier(sched, means, std), y, 1.0)(x, t)
    closed = mixture_log_posterior_grad(sched, means, std, x, t, y)
    assert torch.allclose(auto, closed, rtol=1e-9, atol=1e-9)
    # and p(y | x_t) is the posterior that eps* weights its components with: it sums to 1 over y
    probs = torch.softmax(mixture_classifier(sched, means, std)(x, t), -1)
    assert torch.allclose(probs.sum(-1), torch.ones(64, dtype=torch.float64))


def _exact_guided(sampler, steps: int, scale: float, n: int = 2000, **kw):
    """Samples (data units) and targets from the exact eps* guided by the exact p(y | x_t), on the toy."""
    full = make_schedule("linear", 1000)
    means, std = MEANS * SCALE, STD * SCALE
    sched = respace(full, make_trajectory("uniform", 1000, steps))
    y = torch.randint(25, (n,), generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(0)
    guide = guide_for(mixture_classifier(full, means, std), y, scale)
    x = sampler(ReverseModel(mixture_eps_model(full, means, std)), sched, torch.randn(n, 2, generator=g), generator=g,
                **({} if guide is None else guide(slice(0, n))), **kw)
    return x.numpy() / SCALE, y.numpy()


@pytest.mark.parametrize("steps", [1000, 250])
def test_guided_ddpm_at_scale_one_samples_the_conditional(steps):
    """ADM Alg. 1 with the exact score and exact classifier at s = 1 samples p(x | y): >= 95% within 3 std of y's mode."""
    x, y = _exact_guided(sample_ddpm, steps, 1.0)
    nearest, dist = nearest_mode(x, MEANS)
    on_target = (nearest == y) & (dist <= 3 * STD)
    print(f"\nguided DDPM-{steps}, s = 1: {on_target.mean():.4f} within 3 std of the target mode")
    assert on_target.mean() >= 0.95


def test_guided_ddim_at_scale_one_hits_the_targets():
    """ADM Alg. 2 (the eps shift) with exact parts also lands on the targets."""
    x, y = _exact_guided(sample_ddim, 50, 1.0, eta=0.0)
    assert target_hit_rate(x, y, MEANS) >= 0.95


def test_scale_zero_hits_the_target_by_chance_only():
    """Unguided (s = 0) samples ignore their targets: the hit rate is near 1/25 (binomial s.e. 0.0044 at n = 2000)."""
    x, y = _exact_guided(sample_ddpm, 250, 0.0)
    assert abs(target_hit_rate(x, y, MEANS) - 1 / 25) < 0.015


@pytest.mark.parametrize("sampler,kw", [(sample_ddpm, {"variance": "small"}), (sample_ddim, {"eta": 0.0}),
                                        (sample_ddim, {"eta": 1.0})])
@pytest.mark.parametrize("zero", ["classifier at s = 0", "unit factor r = 1"])
def test_zero_gradient_leaves_the_samples_bit_identical(sampler, kw, zero):
    """The combination rules add exactly nothing for a zero gradient, whichever gradient function gives it: scale 0
    (ADM) and a unit factor r = 1 (Sohl-Dickstein et al. 2015 §2.5, grad log r = 0, no known coordinates) are the
    plain sampler, bit for bit."""
    torch.manual_seed(0)
    model = make_network("mlp", (2,), width=32, depth=1, temb_dim=16).eval()
    classifier = make_classifier("mlp", (2,), 25, width=16, depth=1, temb_dim=16).eval()
    sched = respace(make_schedule("linear", 1000), make_trajectory("uniform", 1000, 20))
    y = torch.randint(25, (300,))
    factor = {"classifier at s = 0": {"guidance": classifier_grad(classifier, y, 0.0)},
              "unit factor r = 1": {"guidance": lambda x, t: torch.zeros_like(x), "known": None}}[zero]
    runs = []
    for conditioning in ({}, factor):
        g = torch.Generator().manual_seed(3)
        x_T = torch.randn(300, 2, generator=g)
        runs.append(sampler(ReverseModel(model), sched, x_T, generator=g, **conditioning, **kw))
    assert torch.equal(runs[0], runs[1])
    assert guide_for(classifier, y, 0.0) is None  # and the stage skips the classifier pass at s = 0 altogether


def test_guidance_moves_samples_and_costs_a_classifier_pass():
    """A nonzero scale changes the samples, and the classifier is called once per sampler step."""
    torch.manual_seed(0)
    model = make_network("mlp", (2,), width=32, depth=1, temb_dim=16).eval()
    classifier = make_classifier("mlp", (2,), 25, width=16, depth=1, temb_dim=16).eval()
    calls = []
    counted = lambda x, t: calls.append(t) or classifier(x, t)  # noqa: E731
    sched = respace(make_schedule("linear", 1000), make_trajectory("uniform", 1000, 20))
    y = torch.randint(25, (100,))
    out = {}
    for s in (0.0, 5.0):
        g = torch.Generator().manual_seed(3)
        out[s] = sample_ddim(ReverseModel(model), sched, torch.randn(100, 2, generator=g), generator=g,
                             guidance=classifier_grad(counted, y, s))
    assert len(calls) == 2 * len(sched)
    assert sorted({int(t[0]) for t in calls}) == sorted(sched.timesteps.tolist())  # original timesteps, as the model
    assert not torch.equal(out[0.0], out[5.0])


@pytest.mark.slow  # 1000-step chains on many points: about 25 s
def test_exact_guidance_at_scale_one_keeps_the_ddpm_modes_and_narrows_the_ddim_ones():
    """With uniform targets, s = 1 with exact parts should give back p(x): each mode as wide as unguided.

    ADM Alg. 1 on DDPM-250 does (ratio within 2%). Alg. 2 on deterministic DDIM-50 narrows the
    modes, less so with 200 steps: a discretization error of the stiffer conditional ODE.
    """
    spread = {}
    for name, sampler, steps, kw in (("ddpm", sample_ddpm, 250, {}), ("ddim", sample_ddim, 50, {"eta": 0.0}),
                                     ("ddim", sample_ddim, 200, {"eta": 0.0})):
        for s in (0.0, 1.0):
            x, _ = _exact_guided(sampler, steps, s, n=10_000, **kw)
            d = nearest_mode(x, MEANS)[1]
            spread[name, steps, s] = float(np.sqrt(np.mean(d[d <= 3 * STD] ** 2) / 2))  # per-coordinate std
    ratio = {k[:2]: spread[(*k[:2], 1.0)] / spread[(*k[:2], 0.0)] for k in spread}
    print("\nper-mode std (data 0.05), unguided -> exact guidance at s = 1: " + ", ".join(
        f"{n}-{st}: {spread[n, st, 0.0]:.4f} -> {spread[n, st, 1.0]:.4f} (x{ratio[n, st]:.3f})" for n, st in ratio))
    assert abs(ratio["ddpm", 250] - 1) < 0.02
    assert ratio["ddim", 50] < 0.85
    assert ratio["ddim", 50] < ratio["ddim", 200] < 1
