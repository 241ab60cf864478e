"""The device layer: runtimes, the forward callable (bf16 autocast, channels_last), per-device schedule tables,
minibatches with DDPM's flips, and checkpoints that resume exactly on any device."""

import copy
import gc
import io

import numpy as np
import pytest
import torch

from components.math import diffusion
from components.training.ddgan import ddgan_train_step
from components.math.diffusion import ReverseModel, device_table, extract, model_timesteps
from components.networks.mlp import MLP, make_discriminator, make_generator
from components.networks.runtime import Runtime, describe, forward_fn, generator, resolve_device
from components.sampling.samplers import sample_ddpm
from components.math.schedules import make_schedule, make_trajectory, respace
from components.training.state import TrainState, checkpoint, restore, to_cpu
from components.training.steps import l_simple, minibatch, train_step
from components.networks.unet import UNet
from pipelines.stages.timing import torch_threads

CPU = torch.device("cpu")
SCHED = make_schedule("linear", 50)
SHAPE = (1, 8, 8)
torch.manual_seed(0)
IMAGES = torch.rand(64, *SHAPE) * 2 - 1  # (N, C, H, W) in [-1, 1]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One thread: tiny convolutions run no slower, and two threads on a busy machine run many times slower."""
    with torch_threads(1):
        yield


def tiny_unet(seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    return UNet(SHAPE, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0)


def trained_state(rt: Runtime, seed: int = 0, steps: int = 3) -> TrainState:
    state = TrainState.create(tiny_unet(seed), lr=1e-3, seed=seed, rt=rt)
    for _ in range(steps):
        train_step(state, SCHED, IMAGES, batch_size=8, lr=1e-3, grad_clip=1.0, ema_decay=0.9, hflip=True)
    return state


def run(rt: Runtime, seed: int) -> tuple[list[float], torch.Tensor]:
    """Losses of a few train steps and DDPM samples of the EMA (10-step chain), all from `seed`."""
    state = TrainState.create(tiny_unet(seed), lr=1e-3, seed=seed, rt=rt)
    losses = [train_step(state, SCHED, IMAGES, batch_size=8, lr=1e-3, grad_clip=1.0, ema_decay=0.9,
                         hflip=True)["loss"] for _ in range(3)]
    chain = respace(SCHED, make_trajectory("uniform", len(SCHED), 10))
    g = generator(rt, seed)
    x_T = torch.randn((4, *SHAPE), generator=g, device=rt.device)
    return losses, sample_ddpm(ReverseModel(forward_fn(state.ema.eval(), rt)), chain, x_T, generator=g)


def test_a_seeded_cpu_run_repeats_exactly_and_the_seed_matters():
    rt = Runtime(CPU)
    losses, samples = run(rt, 0)
    losses_again, samples_again = run(rt, 0)
    assert losses == losses_again and torch.equal(samples, samples_again)
    other_losses, other_samples = run(rt, 1)
    assert other_losses != losses and not torch.allclose(other_samples, samples)


def test_resolve_device_and_describe():
    assert resolve_device("cpu") == CPU
    assert resolve_device("auto") == (torch.device("cuda", 0) if torch.cuda.is_available() else CPU)
    if torch.cuda.is_available():
        assert resolve_device("cuda") == torch.device("cuda", 0)
    else:
        with pytest.raises(RuntimeError, match="is_available"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="auto"):
        resolve_device("tpu")
    with pytest.raises(ValueError, match="bf16"):
        Runtime(CPU, precision="fp16")
    assert describe(Runtime(CPU)) == "cpu (1 thread), fp32"  # one_thread
    assert describe(Runtime("cpu", "bf16", channels_last=True)).endswith(", bf16, channels_last")
    assert generator(Runtime(CPU), 3).initial_seed() == 3


def test_bf16_autocast_returns_float32_close_to_but_not_equal_to_fp32():
    net = tiny_unet().eval()
    x, t = torch.randn(4, *SHAPE), torch.tensor([0, 10, 25, 49])
    with torch.no_grad():
        full = forward_fn(net, Runtime(CPU))(x, t)
        half = forward_fn(net, Runtime(CPU, precision="bf16"))(x, t)
    assert half.dtype == torch.float32 and half.shape == full.shape == x.shape
    assert next(net.parameters()).dtype == torch.float32  # weights stay fp32
    err = (half - full).abs().max().item()
    assert 0 < err < 0.05 * full.abs().max().item()  # bf16 keeps 8 bits of mantissa: close, not equal


def test_channels_last_converts_the_weights_and_keeps_the_output_and_the_checkpoint_keys():
    net = tiny_unet().eval()
    keys = list(net.state_dict())
    x, t = torch.randn(4, *SHAPE), torch.tensor([0, 10, 25, 49])
    with torch.no_grad():
        plain = net(x, t)
        fwd = forward_fn(net, Runtime(CPU, channels_last=True))
        out = fwd(x, t)
    weight = net.down[0].blocks[0].conv1.weight  # (8, 8, 3, 3)
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    torch.testing.assert_close(out, plain, rtol=1e-5, atol=1e-5)
    assert list(net.state_dict()) == keys
    # torch.compile wraps the forward, not the module whose state_dict is saved (compiled lazily: not called here)
    forward_fn(net, Runtime(CPU, compile=True))
    assert list(net.state_dict()) == keys


def test_ddgan_trains_g_and_d_through_the_runtimes_forward():
    """DDGAN's step calls G and D only through the state's forwards, so the runtime's precision reaches both: in bf16
    its losses move off fp32's, and every call of each network went through its forward."""
    def state(rt):
        torch.manual_seed(0)
        G = make_generator("mlp", (2,), nz=4, width=16, depth=1, temb_dim=8, zemb_dim=8, mapping_depth=1)
        D = make_discriminator("mlp", (2,), width=16, depth=1, temb_dim=8, fourier_octaves=2)
        return TrainState.create({"G": G, "D": D}, 1e-3, 0, rt=rt, betas=(0.5, 0.9))

    def step(s):
        return ddgan_train_step(s, make_schedule("ddgan_vp", 4), IMAGES.reshape(-1, 2)[:256], batch_size=16, lr_g=1e-3,
                                lr_d=1e-3, r1_gamma=0.05, r1_every=1, ema_decay=0.9)

    full, half = step(state(Runtime(CPU))), step(state(Runtime(CPU, precision="bf16")))
    for k in ("d_loss", "g_loss"):
        assert full[k] != half[k] and abs(full[k] - half[k]) < 0.05, k
    s, calls = state(Runtime(CPU)), []
    for name, fwd in list(s.forwards.items()):
        s.forwards[name] = lambda *a, fwd=fwd, name=name: calls.append(name) or fwd(*a)
    step(s)
    assert calls.count("G") == 2 and calls.count("D") == 4  # fakes for D's and G's steps; real, fake, R1, G's loss


def test_schedule_tables_are_copied_once_per_table_and_device():
    table, t = SCHED.sqrt_alphas_cumprod, torch.tensor([0, 7, 49])
    first = device_table(table, CPU)
    assert device_table(table, CPU) is first and first.dtype == torch.float64
    assert [k for k in diffusion._tables if k[0] == id(table)] == [(id(table), CPU)]
    like = torch.zeros(3, 2, dtype=torch.float32)
    assert torch.equal(extract(table, t, like), torch.from_numpy(table)[t].float().reshape(3, 1))
    assert device_table(table, CPU) is first  # extract looked the same tensor up
    assert torch.equal(model_timesteps(SCHED, t), t)  # the full chain's timesteps are its indices
    # a respaced schedule has tables (and timesteps) of its own
    short = respace(SCHED, make_trajectory("uniform", len(SCHED), 5))
    assert device_table(short.sqrt_alphas_cumprod, CPU) is not first
    assert torch.equal(model_timesteps(short, torch.arange(5)), torch.from_numpy(short.timesteps))
    # a temporary table leaves no entry behind once it is gone
    temp = np.sqrt(SCHED.alphas)
    key = (id(temp), CPU)
    extract(temp, t, like)
    assert key in diffusion._tables
    del temp
    gc.collect()
    assert key not in diffusion._tables


def test_hflip_mirrors_about_half_the_images_and_draws_nothing_else():
    data = torch.arange(200 * 2 * 3 * 4, dtype=torch.float32).reshape(200, 2, 3, 4)  # distinct pixels
    labels = torch.arange(200)
    n = 4000
    plain, y = minibatch(data, n, torch.Generator().manual_seed(5), labels=labels)
    g = torch.Generator().manual_seed(5)
    flipped, y_flipped = minibatch(data, n, g, labels=labels, hflip=True)
    assert torch.equal(y, y_flipped) and torch.equal(plain, data[y])  # same images drawn: flips come after
    is_flipped = (flipped != plain).flatten(1).any(1)
    assert torch.equal(flipped[is_flipped], plain[is_flipped].flip(-1))
    assert torch.equal(flipped[~is_flipped], plain[~is_flipped])
    assert abs(is_flipped.float().mean().item() - 0.5) < 0.04  # 5 standard errors at n = 4000
    # the flips are one uniform draw per image, taken right after the indices
    ref = torch.Generator().manual_seed(5)
    torch.randint(len(data), (n,), generator=ref)
    assert torch.equal(is_flipped, torch.rand(n, generator=ref) < 0.5)
    assert torch.equal(g.get_state(), ref.get_state())
    with pytest.raises(ValueError, match="hflip"):
        minibatch(torch.randn(10, 2), 4, torch.Generator(), hflip=True)


def test_a_minibatch_without_flips_is_the_old_draw():
    g, old = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
    for _ in range(3):
        x0, y = minibatch(IMAGES, 16, g)
        assert y is None and torch.equal(x0, IMAGES[torch.randint(len(IMAGES), (16,), generator=old)])
    assert torch.equal(g.get_state(), old.get_state())


def test_train_step_draws_minibatch_t_and_noise_in_the_old_order():
    data = torch.randn(300, 2)
    torch.manual_seed(0)
    net = MLP((2,), width=16, depth=1, temb_dim=8)
    ref = copy.deepcopy(net)
    state = TrainState.create(net, lr=1e-2, seed=4)
    g = torch.Generator().manual_seed(4)
    x0 = data[torch.randint(len(data), (32,), generator=g)]
    t = torch.randint(len(SCHED), (32,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    expected = l_simple(ref, SCHED, x0, t, noise).item()
    assert train_step(state, SCHED, data, batch_size=32, lr=1e-2, grad_clip=1.0, ema_decay=0.9)["loss"] == expected
    assert torch.equal(state.generator.get_state(), g.get_state())


def test_to_cpu_keeps_a_cpu_state_dict_the_very_same_object():
    sd = tiny_unet().state_dict()
    assert to_cpu(sd) is sd
    nested = {"a": [torch.ones(2), (torch.zeros(1), 3)], "b": "text"}
    assert to_cpu(nested) is nested


def resume_matches_unbroken(rt: Runtime):
    """Save after 3 steps, load onto a state of other weights and seed, and take step 4 on both.

    Exact on the CPU; on a GPU cuDNN's backward may add in another order, so there to float tolerance.
    """
    same = torch.equal if rt.device.type == "cpu" else lambda a, b: torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    state = trained_state(rt, steps=3)
    buf = io.BytesIO()
    torch.save(checkpoint(state, {"seed": 0}, {"step": [3], "loss": [0.5]}), buf)
    ckpt = torch.load(io.BytesIO(buf.getvalue()), map_location="cpu", weights_only=True)
    tensors = [v for v in ckpt["model"].values()] + [ckpt["rng"]]
    assert all(v.device == CPU for v in tensors)
    resumed = TrainState.create(tiny_unet(seed=9), lr=1e-3, seed=9, rt=rt)  # other weights and RNG
    assert restore(resumed, ckpt) == {"step": [3], "loss": [0.5]} and resumed.step == 3
    step = dict(batch_size=8, lr=1e-3, grad_clip=1.0, ema_decay=0.9, hflip=True)
    loss = train_step(resumed, SCHED, IMAGES, **step)["loss"]
    assert loss == train_step(state, SCHED, IMAGES, **step)["loss"]  # the unbroken run's next step
    for a, b in zip([*resumed.model.parameters(), *resumed.ema.parameters()],
                    [*state.model.parameters(), *state.ema.parameters()]):
        assert same(a, b)


def test_a_checkpoint_restores_training_exactly():
    resume_matches_unbroken(Runtime(CPU))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_restoring_a_cpu_generator_state_into_another_kind_of_generator_says_why():
    state = TrainState.create(tiny_unet(), lr=1e-3, seed=0, rt="cuda")
    ckpt = checkpoint(TrainState.create(tiny_unet(), lr=1e-3, seed=0), {}, {})
    with pytest.raises(ValueError, match="device type"):
        restore(state, ckpt)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_a_gpu_run_resumes_exactly_from_a_cpu_loaded_checkpoint_in_bf16_and_channels_last():
    resume_matches_unbroken(Runtime(torch.device("cuda", 0), "bf16", channels_last=True))
    losses, samples = run(Runtime(torch.device("cuda", 0), "bf16"), 0)
    assert samples.device.type == "cuda" and torch.isfinite(samples).all()
