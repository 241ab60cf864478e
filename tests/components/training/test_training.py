"""Training pieces: L_simple, L_hybrid, timestep samplers, LR schedule, EMA, and checkpoints that resume exactly."""

import copy
import math

import numpy as np
import pytest
import torch

from components.data.gaussians25 import gaussians25_splits
from components.math.diffusion import model_timesteps, q_sample
from components.data.gaussian_mixture import mixture_classifier
from components.networks.mlp import add_variance_output, make_classifier, make_network
from components.math.schedules import make_schedule
from components.training.state import TrainState, checkpoint, ema_update, restore
from components.training.steps import (
    LossSecondMomentTimesteps, UniformTimesteps, accuracy_by_t, classifier_train_step, hybrid_losses,
    hybrid_train_step, lr_at, train_step,
)
from pipelines.plumbing.atomic import atomic_torch_save
from pipelines.plumbing.errors import NonFiniteError
from pipelines.params.training import OptimParams
from pipelines.stages.trainer import train_loop


SCHED = make_schedule("linear", 100)
DATA = torch.randn(512, 2)


def fresh_state(seed=0):
    torch.manual_seed(seed)
    return TrainState.create(make_network("mlp", (2,), width=16, depth=1, temb_dim=8), lr=1e-2, seed=seed)


def steps(state, n):
    for _ in range(n):
        train_step(state, SCHED, DATA, batch_size=32, lr=1e-2, grad_clip=1.0, ema_decay=0.9)


def test_lr_schedule():
    kw = dict(lr=1.0, warmup_steps=10, total_steps=110)
    assert lr_at(0, schedule="cosine", **kw) == pytest.approx(0.1)
    assert lr_at(9, schedule="cosine", **kw) == pytest.approx(1.0)
    assert lr_at(60, schedule="cosine", **kw) == pytest.approx(0.5)
    assert lr_at(110, schedule="cosine", **kw) == pytest.approx(0.0)
    assert lr_at(60, schedule="constant", **kw) == 1.0


def test_ema_update_is_a_convex_step():
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    before = a.weight.detach().clone()
    ema_update(a, b, 0.75)
    assert torch.allclose(a.weight, 0.75 * before + 0.25 * b.weight)


def test_foreach_ema_is_the_per_tensor_update_bit_for_bit():
    """ema_update's one foreach lerp equals a lerp_ per parameter, on every tensor of a network with convolutions,
    norms and attention (the image UNet), also with the weights in channels_last."""
    torch.manual_seed(0)
    net = make_network("unet", (1, 8, 8), ch=8, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[4], dropout=0.0)
    for memory_format in (torch.contiguous_format, torch.channels_last):
        model, ema, reference = (copy.deepcopy(net).to(memory_format=memory_format) for _ in range(3))
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=torch.Generator(device="cpu").manual_seed(p.numel()), device="cpu"))
            for p_ref, p in zip(reference.parameters(), model.parameters()):
                p_ref.lerp_(p, 1.0 - 0.999)
        ema_update(ema, model, 0.999)
        for a, b in zip(ema.parameters(), reference.parameters()):
            assert torch.equal(a, b) and a.stride() == b.stride()


def test_training_lowers_the_loss():
    state = fresh_state()
    first = train_step(state, SCHED, DATA, batch_size=256, lr=1e-2, grad_clip=1.0, ema_decay=0.9)["loss"]
    steps(state, 200)
    last = sum(train_step(state, SCHED, DATA, batch_size=256, lr=1e-2, grad_clip=1.0, ema_decay=0.9)["loss"]
               for _ in range(10)) / 10
    assert last < 0.8 * first


def iddpm_state(seed=0):
    """A small eps network grown to eps and v (v rows zero), as finetune_iddpm builds it."""
    torch.manual_seed(seed)
    eps_net = make_network("mlp", (2,), width=16, depth=1, temb_dim=8)
    net = make_network("mlp", (2,), width=16, depth=1, temb_dim=8, out_mult=2)
    add_variance_output(eps_net.state_dict(), net)
    return eps_net, TrainState.create(net, lr=1e-2, seed=seed)


def test_grown_network_keeps_eps_and_starts_v_at_zero():
    eps_net, state = iddpm_state()
    x, t = torch.randn(64, 2), torch.randint(100, (64,))
    out = state.model(x, t)
    assert torch.allclose(out[:, :2], eps_net(x, t)) and torch.equal(out[:, 2:], torch.zeros(64, 2))


def test_l_vlb_trains_only_the_variance_head():
    """iDDPM's stop-gradient: L_vlb alone leaves the eps rows of the output layer without gradient."""
    _, state = iddpm_state()
    torch.nn.init.normal_(state.model.out[-1].weight, std=0.1)  # a v head that is not all zero
    g = torch.Generator().manual_seed(0)
    x0, t, noise = DATA[:128], torch.randint(len(SCHED), (128,), generator=g), torch.randn(128, 2, generator=g)
    _, vlb = hybrid_losses(state.model, SCHED, x0, t, noise, decoder="continuous")
    vlb.mean().backward()
    head = state.model.out[-1]
    assert torch.count_nonzero(head.weight.grad[:2]) == 0 and torch.count_nonzero(head.bias.grad[:2]) == 0
    assert torch.count_nonzero(head.weight.grad[2:]) > 0 and torch.count_nonzero(head.bias.grad[2:]) > 0
    assert state.model.inp.weight.grad.abs().sum() > 0  # the shared trunk still learns Sigma


def test_l_simple_of_the_hybrid_is_ddpm_l_simple():
    _, state = iddpm_state()
    g = torch.Generator().manual_seed(0)
    x0, t, noise = DATA[:64], torch.randint(len(SCHED), (64,), generator=g), torch.randn(64, 2, generator=g)
    simple, _ = hybrid_losses(state.model, SCHED, x0, t, noise, decoder="continuous")
    eps = state.model(q_sample(SCHED, x0, t, noise), model_timesteps(SCHED, t))[:, :2]
    assert torch.allclose(simple, (eps - noise).pow(2).mean(1))


def test_hybrid_training_moves_sigma_towards_the_bound():
    """A few hundred L_hybrid steps lower L_t on a fixed batch, and v moves off its zero start.

    The batch leaves out t = 0, whose continuous decoder term is large and would swamp the KLs.
    """
    _, state = iddpm_state()
    timesteps = UniformTimesteps(len(SCHED))
    g = torch.Generator().manual_seed(1)
    t = torch.arange(1, len(SCHED)).repeat(4)
    x0, noise = DATA[torch.randint(len(DATA), (len(t),), generator=g)], torch.randn(len(t), 2, generator=g)

    def fixed_batch_l_t() -> float:
        with torch.no_grad():
            return hybrid_losses(state.model, SCHED, x0, t, noise, decoder="continuous")[1].mean().item()

    first = fixed_batch_l_t()
    kw = dict(batch_size=256, lambda_vlb=0.001, decoder="continuous", lr=1e-2, grad_clip=1.0, ema_decay=0.9)
    for _ in range(300):
        hybrid_train_step(state, SCHED, DATA, timesteps, **kw)
    assert fixed_batch_l_t() < first
    v = state.model(DATA[:256], torch.randint(len(SCHED), (256,), generator=g))[:, 2:]
    assert v.abs().mean() > 0.01


def test_importance_sampler_is_uniform_until_full_then_weights_by_inverse_probability():
    T, history = 5, 3
    sampler = LossSecondMomentTimesteps(T, history=history, uniform_prob=0.001)
    g = torch.Generator().manual_seed(0)
    for t in range(T):
        assert sampler.probs() is None
        t_draw, w = sampler.sample(1000, g)
        assert torch.equal(w, torch.ones(1000))
        sampler.update(torch.full((history,), t), torch.full((history,), float(t + 1)))
    p = sampler.probs()
    rms = np.arange(1, T + 1, dtype=float)  # sqrt(mean(L_t^2)) of constant losses t + 1
    assert np.allclose(p, rms / rms.sum() * 0.999 + 0.001 / T)
    t_draw, w = sampler.sample(20000, g)
    assert torch.allclose(w, torch.from_numpy(1 / (T * p[t_draw.numpy()])).float())
    freq = np.bincount(t_draw.numpy(), minlength=T) / 20000
    assert np.allclose(freq, p, atol=0.015)
    assert float(w.mean()) == pytest.approx(1.0, abs=0.03)  # E_p[1 / (T p)] = 1


def test_importance_sampler_keeps_the_last_losses_and_round_trips():
    sampler = LossSecondMomentTimesteps(2, history=2)
    sampler.update(torch.tensor([0, 0, 0, 1, 1]), torch.tensor([9.0, 1.0, 1.0, 2.0, 2.0]))
    assert sorted(sampler.losses[0]) == [1.0, 1.0]  # 9.0 fell out of the history
    other = LossSecondMomentTimesteps(2, history=2)
    other.load_state_dict(sampler.state_dict())
    assert np.array_equal(other.losses, sampler.losses) and np.array_equal(other.counts, sampler.counts)
    assert np.allclose(other.probs(), sampler.probs())


def test_noise_aware_classifier_reaches_bayes_accuracy_by_t():
    """ADM's classifier on the toy: held-out accuracy per t-range tracks the exact p(y | x_t)'s, the Bayes ceiling:
    near 1 at the smallest t, chance (1/25) near T."""
    splits = gaussians25_splits(5000, 2000, 0.05, seed=0)
    train, ref = splits["train"], splits["reference"]
    sched = make_schedule("linear", 1000)
    torch.manual_seed(0)
    state = TrainState.create(make_classifier("mlp", (2,), 25, width=32, depth=2, temb_dim=16), lr=3e-3, seed=0,
                              weight_decay=0.05)
    assert isinstance(state.optimizers["model"], torch.optim.AdamW)
    x, y = torch.from_numpy(train.to_model(train.x)), torch.from_numpy(train.y)
    for i in range(800):
        m = classifier_train_step(state, sched, x, y, batch_size=256, lr=lr_at(i, lr=3e-3, warmup_steps=50,
                                  total_steps=800, schedule="cosine"), grad_clip=1.0, ema_decay=0.95)
    assert 0 < m["accuracy"] < 1 and m["loss"] > 0
    x_ref, y_ref = torch.from_numpy(ref.to_model(ref.x)), torch.from_numpy(ref.y)
    edges, acc = accuracy_by_t(state.ema, sched, x_ref, y_ref, 100, torch.Generator().manual_seed(0))
    exact = mixture_classifier(sched, ref.to_model(ref.modes), ref.mode_std * ref.scale)
    _, bayes = accuracy_by_t(exact, sched, x_ref, y_ref, 100, torch.Generator().manual_seed(0))
    assert list(edges[:3]) == [0, 10, 20] and edges[-1] == 1000
    print(f"\naccuracy by t: [0, 10) {acc[0]:.3f} (Bayes {bayes[0]:.3f}), [500, 510) {acc[50]:.3f} ({bayes[50]:.3f}), "
          f"t >= 900 {acc[90:].mean():.3f} ({bayes[90:].mean():.3f}); mean |acc - Bayes| {np.abs(acc - bayes).mean():.4f}")
    assert bayes[0] > 0.99 and acc[0] > 0.97
    assert abs(acc[90:].mean() - 1 / 25) < 0.01 and abs(bayes[90:].mean() - 1 / 25) < 0.01
    assert np.abs(acc - bayes).mean() < 0.02
    assert (np.diff(bayes[:30]) < 0.02).all()  # the ceiling falls with t


def _optim(**over) -> OptimParams:
    kw = dict(seed=0, steps=20, batch_size=32, lr=1e-2, lr_schedule="cosine", warmup_steps=2, ema_decay=0.9, grad_clip=1.0,
              log_every=5, checkpoint_every=5)
    return OptimParams(**{**kw, **over})


def _looped(p: OptimParams, partial, state=None, history=None, fault=None):
    """train_loop over L_simple on DATA with atomic, canonical resume checkpoints at `partial`; `fault(step, metrics)`
    may change the metrics or raise, to inject a failure."""
    state = state or fresh_state()
    history = history if history is not None else {"step": [], "loss": [], "lr": []}

    def step_fn(lr):
        metrics = train_step(state, SCHED, DATA, batch_size=p.batch_size, lr=lr, grad_clip=p.grad_clip,
                             ema_decay=p.ema_decay)
        return fault(state.step, metrics) if fault else metrics

    def save(path):
        atomic_torch_save(path, checkpoint(state, {"cfg": "x"}, history))

    train_loop("t", p, state, step_fn, history, save, partial)
    return state, history, save


def test_a_resumed_loop_writes_the_bytes_an_unbroken_one_writes(tmp_path):
    """Killed between resume checkpoints, resumed from the last one (loaded weights_only, into a state of other
    weights and RNG): the final checkpoint (weights, EMA, optimizer, RNG, history) is byte-identical. The one test of
    checkpoint/restore resuming bit for bit (the DDGAN pair: tests/components/training/test_ddgan.py; a GPU: tests/components/networks/test_runtime.py)."""
    p = _optim()
    _, _, save = _looped(p, tmp_path / "a.partial")
    save(tmp_path / "a.pt")

    def interrupt(step, metrics):
        if step == 13:
            raise KeyboardInterrupt
        return metrics

    with pytest.raises(KeyboardInterrupt):
        _looped(p, tmp_path / "b.partial", fault=interrupt)
    state = fresh_state(seed=7)  # everything must come from the resume checkpoint
    ckpt = torch.load(tmp_path / "b.partial", weights_only=True)
    assert ckpt["step"] == 10 and ckpt["config"] == {"cfg": "x"}
    history = restore(state, ckpt)
    assert state.step == 10 and history["step"] == [5, 10] and len(history["loss"]) == 2
    _, _, save = _looped(p, tmp_path / "b.partial", state=state, history=history)
    save(tmp_path / "b.pt")
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
    assert (tmp_path / "b.partial").read_bytes() == (tmp_path / "a.pt").read_bytes()  # saved after the last step too


def test_a_non_finite_loss_stops_the_loop_naming_the_last_good_checkpoint(tmp_path):
    def nan_at_12(step, metrics):
        return {**metrics, "loss": math.nan} if step == 12 else metrics

    with pytest.raises(NonFiniteError) as e:
        _looped(_optim(), tmp_path / "m.partial", fault=nan_at_12)
    assert str(e.value) == (f"t: loss is nan at step 12: training diverged, nothing written; last good checkpoint "
                            f"{tmp_path / 'm.partial'} (step 10)")
    assert torch.load(tmp_path / "m.partial", weights_only=True)["step"] == 10
    with pytest.raises(NonFiniteError, match=r"^t: loss is inf at step 3: .*; no checkpoint saved yet \(checkpoint_every = 5\)$"):
        _looped(_optim(), tmp_path / "n.partial", fault=lambda step, m: {**m, "loss": math.inf} if step == 3 else m)
    assert not (tmp_path / "n.partial").exists()


def test_a_loss_read_later_still_names_its_step_and_nothing_non_finite_is_saved(tmp_path):
    """The loop reads the device every log_every steps: a NaN at step 6 is seen at the read after step 10, reported
    as step 6, and the checkpoint due at step 10 is not written."""
    p = _optim(log_every=5, checkpoint_every=10)

    def nan_at_6(step, metrics):
        return {**metrics, "loss": metrics["loss"] * math.nan} if step == 6 else metrics  # a NaN on the device

    with pytest.raises(NonFiniteError, match=r"^t: loss is nan at step 6: training diverged, nothing written; no "
                                             r"checkpoint saved yet \(checkpoint_every = 10\)$"):
        _looped(p, tmp_path / "d.partial", fault=nan_at_6)
    assert not (tmp_path / "d.partial").exists()


def test_non_finite_weights_are_never_saved(tmp_path):
    state = fresh_state()

    def poison(step, metrics):
        if step == 9:  # after the step's loss was computed: only the weights tell
            with torch.no_grad():
                state.ema.inp.weight[0, 0] = math.inf
        return metrics

    with pytest.raises(NonFiniteError, match=r"^t: non-finite weights in ema.inp.weight at step 10: training diverged"):
        _looped(_optim(), tmp_path / "w.partial", state=state, fault=poison)
    assert torch.load(tmp_path / "w.partial", weights_only=True)["step"] == 5
