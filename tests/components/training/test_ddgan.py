"""Denoising Diffusion GAN: its pair sampler, posterior, R1 and sampler against closed forms; determinism; the per-step
posterior diagnostic against the exact posterior; the default recipe's mode coverage on a small grid."""

import dataclasses

import mlflow
import numpy as np
import pytest
import torch
from torch import nn

from components.training.ddgan import ddgan_train_step, mean_by_t, q_sample_pair, r1_penalty
from components.math.diffusion import sample_posterior
from components.data.gaussians25 import gaussians25_means
from components.data.gaussian_mixture import mixture_posterior_sample
from components.scoring.metrics import mode_metrics
from components.networks.mlp import make_discriminator, make_generator
from components.sampling.posterior_match import posterior_match
from components.sampling.samplers import GANGenerator, sample_ddgan
from components.math.schedules import make_schedule
from components.training.state import TrainState, checkpoint, checkpoint_keys, restore
from conftest import ROOT, run
from pipelines.params import load_params
from pipelines.stages.train_ddgan import new_state, recipe_step


@pytest.mark.parametrize("t", [0, 1, 3])
def test_posterior_draws_match_q_given_x0(t):
    """x_{t-1} ~ q(x_{t-1} | x_t, x0) for fixed x0, x_t: the mean and variance of DDPM eq. 7, from abar alone."""
    sched = make_schedule("ddgan_vp", 4)
    n = 200_000
    x0, x_t = torch.full((n, 2), 0.7, dtype=torch.float64), torch.full((n, 2), -0.4, dtype=torch.float64)
    tt = torch.full((n,), t)
    draws = sample_posterior(sched, x0, x_t, tt, torch.randn(n, 2, generator=torch.Generator().manual_seed(t),
                                                               dtype=torch.float64))
    abar = sched.alphas_cumprod[t]
    abar_prev = sched.alphas_cumprod[t - 1] if t > 0 else 1.0
    beta = 1 - abar / abar_prev
    mean = (np.sqrt(abar_prev) * beta * 0.7 + np.sqrt(1 - beta) * (1 - abar_prev) * -0.4) / (1 - abar)
    var = (1 - abar_prev) / (1 - abar) * beta
    assert draws.mean(0).numpy() == pytest.approx([mean, mean], abs=4 * np.sqrt(var / n) + 1e-12)
    if t == 0:  # the last step adds no noise: x_{-1} = x0
        assert torch.allclose(draws, x0)
    else:
        assert draws.var(0).numpy() == pytest.approx([var, var], rel=0.01)


def test_pair_sampler_has_the_forward_process_joint():
    """For x0 ~ N(0, s^2 I), (x_{t-1}, x_t) is jointly Gaussian: Var x_{t-1} = abar_{t-1} s^2 + 1 - abar_{t-1},
    Var x_t = abar_t s^2 + 1 - abar_t, Cov = sqrt(alpha_t) Var x_{t-1}; at t = 0, x_{-1} is x0 itself."""
    sched = make_schedule("ddgan_vp", 4)
    g = torch.Generator().manual_seed(0)
    n, s = 400_000, 0.5
    x0 = s * torch.randn(n, 2, generator=g, dtype=torch.float64)
    abar = np.append(1.0, sched.alphas_cumprod)  # abar_{t-1} at index t
    for t in range(4):
        x_prev, x_t = q_sample_pair(sched, x0, torch.full((n,), t), torch.randn(n, 2, generator=g, dtype=torch.float64),
                                    torch.randn(n, 2, generator=g, dtype=torch.float64))
        var_prev = abar[t] * s**2 + 1 - abar[t]
        var_t = abar[t + 1] * s**2 + 1 - abar[t + 1]
        cov = np.cov(np.stack([x_prev[:, 0].numpy(), x_t[:, 0].numpy()]))
        assert cov[0, 0] == pytest.approx(var_prev, rel=0.01)
        assert cov[1, 1] == pytest.approx(var_t, rel=0.01)
        expected = np.sqrt(1 - sched.betas[t]) * var_prev
        se = np.sqrt((var_prev * var_t + expected**2) / n)  # standard error of a Gaussian sample covariance
        assert abs(cov[0, 1] - expected) < 5 * se
        assert abs(np.cov(x_prev[:, 0].numpy(), x_prev[:, 1].numpy())[0, 1]) < 0.01  # coordinates independent
        if t == 0:
            assert torch.equal(x_prev, x0)


class _Constant(nn.Module):
    """A discriminator constant in x_{t-1}: a learnable bias, plus, if asked, a function of x_t alone."""

    def __init__(self, use_x_t: bool):
        super().__init__()
        self.bias, self.use_x_t = nn.Parameter(torch.tensor(0.3)), use_x_t

    def forward(self, x_prev, x_t, t):
        out = self.bias.expand(len(x_prev))
        return out + x_t.pow(2).sum(1) if self.use_x_t else out


@pytest.mark.parametrize("use_x_t", [False, True])
def test_r1_is_zero_for_a_discriminator_constant_in_its_input(use_x_t):
    x_prev, x_t, t = torch.randn(64, 2), torch.randn(64, 2), torch.zeros(64, dtype=torch.long)
    assert torch.equal(r1_penalty(_Constant(use_x_t), x_prev, x_t, t), torch.zeros(64))


def test_r1_is_the_squared_gradient_norm_and_trains():
    """For D = a . x_{t-1}, R1 = |a|^2 per sample, and it is differentiable in a (it can be minimised)."""
    a = nn.Parameter(torch.tensor([3.0, -4.0]))
    r1 = r1_penalty(lambda x_prev, x_t, t: x_prev @ a, torch.randn(8, 2), torch.randn(8, 2), torch.zeros(8, dtype=torch.long))
    assert torch.allclose(r1, torch.full((8,), 25.0))
    r1.mean().backward()
    assert torch.allclose(a.grad, 2 * a.detach())


def test_mean_by_t_leaves_empty_t_nan():
    means = mean_by_t(torch.tensor([1.0, 3.0, 5.0]), torch.tensor([0, 0, 2]), 3)
    assert means[0] == 2.0 and np.isnan(means[1]) and means[2] == 5.0


class _ExactPosteriorG(nn.Module):
    """G(x_t, t, z) = a draw from the true p(x0 | x_t) for x0 ~ N(0, s^2 I): with it, DDGAN's sampler is exact."""

    def __init__(self, sched, s):
        super().__init__()
        self.nz, self.abar, self.s = 2, torch.from_numpy(sched.alphas_cumprod), s

    def forward(self, x_t, t, z):
        abar = self.abar[t][:, None].to(x_t.dtype)
        denom = abar * self.s**2 + 1 - abar
        return abar.sqrt() * self.s**2 / denom * x_t + (self.s**2 * (1 - abar) / denom).sqrt() * z


@pytest.mark.parametrize("T", [1, 2, 4])
def test_sampler_with_the_exact_posterior_generator_recovers_the_data(T):
    """q(x_{t-1} | x_t) = E_{x0 | x_t} q(x_{t-1} | x_t, x0): sampling x0 from the true posterior at each step gives
    x0 ~ N(0, s^2 I) for any T, the premise of DDGAN's parametrisation (§3.3)."""
    sched, s, n = make_schedule("ddgan_vp", T), 0.5, 200_000
    g = torch.Generator().manual_seed(T)
    G = _ExactPosteriorG(sched, s)
    x = sample_ddgan(GANGenerator(G, G.nz), sched, torch.randn(n, 2, generator=g, dtype=torch.float64), generator=g)
    assert x.mean(0).abs().max() < 0.01
    assert x.var(0).numpy() == pytest.approx([s**2, s**2], rel=0.02)


def _state(seed=0):
    torch.manual_seed(seed)
    G = make_generator("mlp", (2,), nz=4, width=16, depth=1, temb_dim=8, zemb_dim=8, mapping_depth=1)
    D = make_discriminator("mlp", (2,), width=16, depth=1, temb_dim=8, fourier_octaves=2)
    return TrainState.create({"G": G, "D": D}, 1e-3, seed, betas=(0.5, 0.9))


def _run(state, sched, data, steps):
    return [ddgan_train_step(state, sched, data, batch_size=64, lr_g=1e-3, lr_d=1e-3, r1_gamma=0.1, r1_every=3,
                             ema_decay=0.9) for _ in range(steps)]


def test_seeded_training_is_deterministic_and_resumes_bit_for_bit():
    sched = make_schedule("ddgan_vp", 4)
    data = torch.randn(1000, 2, generator=torch.Generator().manual_seed(0))
    a, b = _state(), _state()
    ma, mb = _run(a, sched, data, 10), _run(b, sched, data, 10)
    assert ma == mb  # every loss, per t, identically
    assert not np.isnan(ma[0]["r1"]) and np.isnan(ma[1]["r1"]) and not np.isnan(ma[3]["r1"])  # lazy: steps 0, 3, ...
    assert set(ma[0]) == {"d_loss", "g_loss", "r1", *(f"{k}_t{i}" for k in ("d_loss", "g_loss", "r1") for i in range(4))}
    # a checkpoint taken at step 5 and restored into fresh networks continues exactly as the unbroken run
    c = _state()
    _run(c, sched, data, 5)
    ckpt = checkpoint(c, {"T": 4}, {"step": [5]})
    d = _state(seed=1)  # other initial weights and RNG: all of it must come from the checkpoint
    assert restore(d, ckpt) == {"step": [5]}
    assert _run(d, sched, data, 5) == ma[5:]
    for key, value in a.ema.state_dict().items():
        assert torch.equal(value, d.ema.state_dict()[key]), key
    assert d.step == 10


def test_generator_uses_its_latent_and_discriminator_scores_pairs():
    G = make_generator("mlp", (2,), nz=8)
    D = make_discriminator("mlp", (2,), fourier_octaves=3)
    x, t = torch.randn(5, 2), torch.tensor([0, 1, 2, 3, 0])
    out = G(x, t, torch.randn(5, 8))
    assert out.shape == (5, 2) and not torch.allclose(out, G(x, t, torch.randn(5, 8)))
    assert D(out, x, t).shape == (5,)


@pytest.mark.slow
def test_ddgan_stages_smoke(tiny_repo):
    """`dvc repro sample_ddgan@4` on a tiny budget: the checkpoint holds both networks, both optimisers, the EMA,
    step and RNG (weights_only); the per-t losses reach the CSV and MLflow; the samples have NFE 4."""
    out = run(["dvc", "repro", "sample_ddgan@4"], tiny_repo).stdout
    ran = sorted(line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage"))
    assert ran == ["evaluator", "prepare", "reference", "sample_ddgan@4", "train_ddgan@4", "validate"]
    ckpt = torch.load(tiny_repo / "models/ddgan-4.pt", weights_only=True)
    assert set(checkpoint_keys(_state())) <= set(ckpt) and ckpt["step"] == 30
    assert ckpt["config"]["diffusion"] == {"schedule": "logsnr_linear", "T": 4}
    assert set(ckpt["opt_g"]["state"]) and set(ckpt["opt_d"]["state"])  # both optimisers stepped
    samples = np.load(tiny_repo / "samples/ddgan-4.npz")
    assert int(samples["nfe"]) == 4 and samples["x"].shape == (500, 2) and np.isfinite(samples["x"]).all()
    header = (tiny_repo / "plots/train_ddgan/4/losses.csv").read_text().splitlines()
    assert header[0] == "step,t,term,value" and len(header) == 1 + 3 * 3 * 5  # 3 logged steps x 3 terms x (4 t + all)
    run(["python", "-m", "pipelines.plumbing.tracking", "flush"], tiny_repo)  # what the background logger has not written yet
    mlflow.set_tracking_uri(f"sqlite:///{tiny_repo / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["trilemma"]).set_index("tags.mlflow.runName")
    run_id = runs.loc["train_ddgan@4", "run_id"]
    history = mlflow.MlflowClient().get_metric_history(run_id, "d_loss_t0")
    assert [m.step for m in history] == [10, 20, 30]
    assert runs.loc["sample_ddgan@4", "metrics.nfe"] == 4


def _grid(points, std, n, seed):
    """A square grid mixture with means at `points` x `points`, in the 25-Gaussians toy's model space (data / sqrt(8 +
    std^2)): means (K, 2), std, and n draws."""
    means = torch.tensor([[a, b] for a in points for b in points], dtype=torch.float32)
    scale = 1 / np.sqrt(8 + std**2)
    g = torch.Generator().manual_seed(seed)
    x = means[torch.randint(len(means), (n,), generator=g)] + std * torch.randn(n, 2, generator=g)
    return (means * scale).numpy(), std * scale, x * scale


@pytest.mark.parametrize("schedule", ["ddgan_vp", "logsnr_linear"])
def test_posterior_match_is_perfect_for_the_exact_posterior_and_fails_a_collapsed_one(schedule):
    """The per-t diagnostic on the exact posterior "generator" (x0 ~ q(x0 | x_t) in closed form) on the 25-mode grid:
    every posterior mode reached, TV at its sampling floor, hq at the 3-std share of a 2-D Gaussian (1 - e^-4.5).
    A generator that always returns the posterior's likeliest mode is on-mode but misses the other modes."""
    means, std, x0 = _grid(gaussians25_means()[:5, 1], 0.05, 20_000, 0)
    sched = make_schedule(schedule, 4)
    exact = posterior_match(lambda x_t, t, g: mixture_posterior_sample(sched, means, std, x_t, t, g), sched, means,
                            std, x0, generator=torch.Generator().manual_seed(1))
    assert [r["t"] for r in exact] == [0, 1, 2, 3]
    for r in exact:
        assert r["reached"] == 1.0 and r["tv"] < 0.15, r  # floor: about sqrt(modes / n_z) / 2
        assert r["hq"] == pytest.approx(1 - np.exp(-4.5), abs=0.005), r
    assert exact[-1]["posterior_modes"] == 25  # the last step (abar ~ 0) is the whole mixture

    def likeliest(x_t, t, g):
        from components.data.gaussian_mixture import mixture_posterior_probs
        return torch.as_tensor(means)[mixture_posterior_probs(sched, means, std, x_t, t).argmax(1)].to(x_t.dtype)

    collapsed = posterior_match(likeliest, sched, means, std, x0, generator=torch.Generator().manual_seed(1))
    for r in collapsed:
        assert r["hq"] == 1.0
        if r["posterior_modes"] > 5:
            assert r["reached"] < 0.25 and r["tv"] > 0.5, r


@pytest.mark.slow
def test_default_recipe_covers_every_mode_of_a_9_mode_grid():
    """params.yaml's train_ddgan recipe (networks, schedule, optimiser), T = 4, on the centre 3 x 3 of the toy's grid
    (std 0.05 at spacing 2, the toy's model space): a short seeded run reaches all 9 modes, near-uniformly, mostly at
    high quality (seeds 0, 1, 2 all give 9 modes, hq 0.76-0.79, KL 0.01-0.04). Fails if the recipe's coverage
    regresses."""
    p = dataclasses.replace(load_params(ROOT / "params.yaml").train_ddgan, steps=3000, batch_size=256)
    means, std, x0 = _grid([-2.0, 0.0, 2.0], 0.05, 20_000, 0)
    sched = make_schedule(p.schedule, 4)
    state = new_state(p, (2,), 0)
    while state.step < p.steps:
        recipe_step(state, sched, x0, p)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        x = sample_ddgan(GANGenerator(state.ema.eval(), state.ema.nz), sched, torch.randn(2000, 2, generator=g), generator=g)
    m = mode_metrics(x.numpy(), means, std, min_count=20)
    assert m["modes"] == 9 and m["kl_uniform"] < 0.1 and m["hq_fraction"] > 0.6, m
