"""DDPM's UNet (components/networks/unet.py): shapes, DDPM's exact parameter count, the eps/v output split, time conditioning."""

import math
import re

import pytest
import torch

from components.math.diffusion import split_output
from components.networks.mlp import add_variance_output, make_network
from components.networks.registry import NETWORKS
from components.networks.unet import AttnBlock, UNet, norm_groups

CIFAR = dict(ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,), dropout=0.1)
MNIST = dict(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(7,))
SMALL = dict(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,))


def n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def small_net(data_shape=(3, 32, 32), seed=0, **kw) -> UNet:
    torch.manual_seed(seed)
    return UNet(data_shape, **{**SMALL, **kw}).eval()


@pytest.mark.parametrize("data_shape, kw", [((1, 28, 28), MNIST), ((3, 32, 32), SMALL)])
@pytest.mark.parametrize("out_mult", [1, 2])
def test_output_shape_is_the_input_shape_times_out_mult(data_shape, kw, out_mult):
    net = UNet(data_shape, **kw, out_mult=out_mult).eval()
    c, h, w = data_shape
    with torch.no_grad():
        out = net(torch.randn(2, c, h, w), torch.tensor([0, 999]))
    assert out.shape == (2, c * out_mult, h, w)
    assert torch.isfinite(out).all()


def test_ddpm_cifar10_configuration_has_35_746_307_parameters():
    """DDPM's CIFAR-10 model is 35.7M parameters (Ho et al. 2020, appendix B); a v head adds one 3x3 conv's rows."""
    net = UNet((3, 32, 32), **CIFAR).eval()
    assert n_params(net) == 35_746_307
    assert n_params(UNet((3, 32, 32), **CIFAR, out_mult=2)) == 35_746_307 + 3 * 3 * 128 * 3 + 3
    with torch.no_grad():
        assert net(torch.randn(1, 3, 32, 32), torch.tensor([10])).shape == (1, 3, 32, 32)


def test_v_half_comes_from_its_own_rows_of_conv_out():
    """split_output's eps and v (iDDPM §3.1) are separate rows of the last conv: zeroing v's rows touches only v."""
    net = small_net(out_mult=2)
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([3, 700])
    with torch.no_grad():
        eps, v = split_output(net(x, t), x)
        assert eps.shape == v.shape == x.shape and v.abs().max() > 0
        net.conv_out.weight[3:] = 0
        net.conv_out.bias[3:] = 0
        eps2, v2 = split_output(net(x, t), x)
    assert torch.equal(eps2, eps)
    assert torch.equal(v2, torch.zeros_like(v2))


def test_add_variance_output_keeps_the_eps_network():
    """iDDPM fine-tuning from an eps model: the grown UNet's eps half is the old output, v starts at zero."""
    eps_net, var_net = small_net(), small_net(out_mult=2, seed=1)
    add_variance_output(eps_net.state_dict(), var_net)
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([0, 50])
    with torch.no_grad():
        eps, v = split_output(var_net(x, t), x)
        assert torch.allclose(eps, eps_net(x, t), atol=1e-6)
    assert torch.equal(v, torch.zeros_like(v))


def test_the_output_depends_on_t():
    net = small_net()
    x = torch.randn(1, 3, 32, 32).expand(2, -1, -1, -1)
    with torch.no_grad():
        out = net(x, torch.tensor([1, 900]))
    assert (out[0] - out[1]).abs().max() > 1e-3


def test_norm_groups_are_ddpms_32_and_keep_at_least_4_channels_each():
    """Every channel count of DDPM's CIFAR-10 UNet gets 32 groups; narrow layers get fewer, never one channel each."""
    assert {norm_groups(c) for c in (128, 256, 384, 512)} == {32}
    assert (norm_groups(16), norm_groups(32), norm_groups(64), norm_groups(96), norm_groups(3)) == (4, 8, 16, 16, 1)
    for c in range(1, 600):
        g = norm_groups(c)
        assert c % g == 0 and g <= 32 and (c // g >= 4 or g == 1)


def test_attention_is_single_head_softmax_of_q_k_over_sqrt_c():
    """AttnBlock = x + proj(softmax(q k^T / sqrt(C)) v) over the pixels, q, k, v of GroupNorm(x) (DDPM's attn)."""
    torch.manual_seed(0)
    block = AttnBlock(32)
    x = torch.randn(2, 32, 4, 5)
    with torch.no_grad():
        h = block.norm(x)
        q, k, v = (f(h).flatten(2) for f in (block.q, block.k, block.v))  # (B, C, HW)
        w = torch.softmax(torch.einsum("bci,bcj->bij", q, k) / math.sqrt(32), dim=-1)  # (B, HW query, HW key)
        expected = x + block.proj(torch.einsum("bij,bcj->bci", w, v).reshape(x.shape))
        assert torch.allclose(block(x), expected, atol=1e-5)


def test_channels_last_gives_the_same_output():
    net = small_net()
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([5, 400])
    with torch.no_grad():
        expected = net(x, t)
        net = net.to(memory_format=torch.channels_last)
        out = net(x.to(memory_format=torch.channels_last), t)
    assert torch.allclose(out, expected, atol=1e-5)


def test_make_network_accepts_lists_and_the_registry_reads_the_options():
    net = make_network("unet", (1, 28, 28), ch=16, ch_mult=[1, 2], attn_resolutions=[14], num_res_blocks=1)
    assert isinstance(net, UNet)
    assert sum(isinstance(m, AttnBlock) for m in net.modules()) == 1 + 1 + 2  # down 14, middle, up 14 (2 blocks)
    assert net(torch.randn(2, 1, 28, 28), torch.tensor([0, 1])).shape == (2, 1, 28, 28)
    assert NETWORKS.parameters("unet") == {
        "data_shape": ("tuple[int, ...]", NETWORKS.parameters("mlp")["data_shape"][1]),
        "ch": ("int", 128), "ch_mult": ("tuple[int, ...]", (1, 2, 2, 2)), "num_res_blocks": ("int", 2),
        "attn_resolutions": ("tuple[int, ...]", (16,)), "dropout": ("float", 0.1), "out_mult": ("int", 1),
    }


@pytest.mark.parametrize("data_shape, kw, message", [
    ((1, 28, 28), dict(ch_mult=(1, 2, 2, 2), attn_resolutions=()), "not divisible by 2^(len(ch_mult) - 1) = 8"),
    ((1, 28, 30), dict(ch_mult=(1, 2, 2), attn_resolutions=()), "28x30 is not divisible"),
    ((1, 28, 28), dict(ch_mult=(1, 2, 2), attn_resolutions=(16,)), "resolutions (28, 14, 7)"),
    ((28, 28), dict(), "(C, H, W)"),
    ((1, 28, 28), dict(ch_mult=(), attn_resolutions=()), "non-empty"),
])
def test_bad_configurations_raise_naming_the_problem(data_shape, kw, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        UNet(data_shape, ch=16, **kw)
