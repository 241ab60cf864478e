"""DDGAN's image networks (components/networks/generator.py): the generator's latent path (a different z gives a
different x0-hat, hence a different x_{t-1}, from the same x_t), its range and t-conditioning; the discriminator's
t-conditioning and its reading of both members of the pair; the minibatch-stddev channel; argument checks and the
registry entries; and that the UNet denoiser is untouched by the adaptive norm its blocks can take."""

import pytest
import torch

from components.math.diffusion import sample_posterior
from components.math.schedules import make_schedule
from components.networks.generator import ConvDiscriminator, UNetGenerator, minibatch_stddev
from components.networks.mlp import make_discriminator, make_generator
from components.networks.unet import UNet

SHAPE = (3, 28, 28)


def generator(seed=0, **kw) -> UNetGenerator:
    torch.manual_seed(seed)
    return UNetGenerator(SHAPE, **{"ch": 8, **kw}).eval()


def discriminator(seed=0, **kw) -> ConvDiscriminator:
    torch.manual_seed(seed)
    return ConvDiscriminator(SHAPE, **{"ch": 8, **kw}).eval()


def test_a_different_latent_gives_a_different_denoising_of_the_same_x_t():
    G, sched = generator(), make_schedule("ddgan_vp", 4)
    g = torch.Generator(device="cpu").manual_seed(0)
    x_t, t = torch.randn(4, *SHAPE, generator=g, device="cpu"), torch.tensor([3, 2, 1, 1], device="cpu")
    z1, z2 = (torch.randn(4, G.nz, generator=g, device="cpu") for _ in range(2))
    noise = torch.randn(x_t.shape, generator=g, device="cpu")
    with torch.no_grad():
        x0_1, x0_2 = G(x_t, t, z1), G(x_t, t, z2)
        assert torch.equal(x0_1, G(x_t, t, z1))  # a function of (x_t, t, z): nothing else random
        prev_1, prev_2 = (sample_posterior(sched, x0, x_t, t, noise) for x0 in (x0_1, x0_2))
    assert x0_1.shape == x_t.shape
    per_sample = (prev_1 - prev_2).flatten(1).abs().amax(1)
    assert (per_sample > 1e-3).all(), per_sample  # every sample's x_{t-1} moves with z, the same x_t and noise


def test_generator_output_is_an_image_in_minus_one_one_and_reads_t():
    G = generator()
    x_t, z = torch.randn(2, *SHAPE, device="cpu") * 5, torch.randn(2, G.nz, device="cpu")
    with torch.no_grad():
        a, b = G(x_t, torch.tensor([0, 0], device="cpu"), z), G(x_t, torch.tensor([3, 3], device="cpu"), z)
    assert a.abs().max() <= 1 and not torch.allclose(a, b)


def test_every_generator_block_has_the_adaptive_norm_and_the_denoiser_none():
    G = generator()
    blocks = [m for m in G.modules() if hasattr(m, "style")]
    assert blocks and all(b.style is not None and not b.norm2.affine for b in blocks)
    torch.manual_seed(0)
    plain = UNet(SHAPE, ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=())
    assert all(m.style is None and m.norm2.affine for m in plain.modules() if hasattr(m, "style"))


def test_discriminator_reads_t_and_both_members_of_the_pair():
    D = discriminator()
    g = torch.Generator(device="cpu").manual_seed(1)
    x_prev, x_t = (torch.randn(4, *SHAPE, generator=g, device="cpu") for _ in range(2))
    t0, t3 = torch.zeros(4, dtype=torch.long, device="cpu"), torch.full((4,), 3, device="cpu")
    with torch.no_grad():
        out = D(x_prev, x_t, t0)
        assert out.shape == (4,) and torch.isfinite(out).all()
        assert (D(x_prev, x_t, t3) - out).abs().min() > 1e-6  # t changes every sample's logit
        assert (D(x_prev.flip(0), x_t, t0) - out).abs().max() > 1e-6  # x_{t-1} enters
        assert (D(x_prev, x_t.flip(0), t0) - out).abs().max() > 1e-6  # x_t enters


def test_discriminator_gradient_reaches_x_prev_for_r1():
    D = discriminator()
    x_prev = torch.randn(4, *SHAPE, device="cpu", requires_grad=True)
    D(x_prev, torch.randn(4, *SHAPE, device="cpu"), torch.ones(4, dtype=torch.long, device="cpu")).sum().backward()
    assert x_prev.grad.abs().sum() > 0


def test_minibatch_stddev_is_the_groups_spread_and_falls_back_to_the_batch():
    h = torch.randn(8, 3, 2, 2, device="cpu")
    out = minibatch_stddev(h, 4)
    assert out.shape == (8, 4, 2, 2) and torch.equal(out[:, :3], h)
    # sample i is in group i % 2 (StyleGAN's layout): the std over samples {0, 2, 4, 6}
    expected = h[0::2].var(0, unbiased=False).add(1e-8).sqrt().mean()
    assert torch.allclose(out[0, 3], expected.expand(2, 2)) and torch.allclose(out[6, 3], expected.expand(2, 2))
    odd = minibatch_stddev(h[:6], 4)  # 4 does not divide 6: one group, the whole batch
    assert torch.allclose(odd[0, 3, 0, 0], h[:6].var(0, unbiased=False).add(1e-8).sqrt().mean())


@pytest.mark.parametrize("kw, match", [({"nz": 0}, "nz"), ({"zemb_dim": 0}, "zemb_dim"),
                                       ({"ch_mult": (1, 2, 2, 2)}, "not divisible")])
def test_generator_refuses_bad_options(kw, match):
    with pytest.raises(ValueError, match=match):
        UNetGenerator(SHAPE, **kw)


@pytest.mark.parametrize("kw, match", [({"ch": 0}, "ch"), ({"ch_mult": (1,) * 6}, "below one pixel"),
                                       ({"stddev_group": 0}, "stddev_group")])
def test_discriminator_refuses_bad_options(kw, match):
    with pytest.raises(ValueError, match=match):
        ConvDiscriminator(SHAPE, **kw)


def test_registry_names_build_the_image_networks():
    G = make_generator("unet", (1, 28, 28), ch=8)
    D = make_discriminator("conv", (1, 28, 28), ch=8)
    assert isinstance(G, UNetGenerator) and G.nz == 32 and isinstance(D, ConvDiscriminator)
    x, t = torch.randn(2, 1, 28, 28, device="cpu"), torch.tensor([0, 1], device="cpu")
    assert D(G(x, t, torch.randn(2, 32, device="cpu")), x, t).shape == (2,)
