"""ADM's noise-aware image classifier (components/networks/encoder.py): logits' shape, dependence on t, gradients
to x_t for guidance, argument checks, the registry entry, and accuracy_by_t's chunked forward passes."""

import numpy as np
import pytest
import torch

from components.math.schedules import make_schedule
from components.networks.encoder import AttentionPool, EncoderClassifier
from components.networks.mlp import make_classifier
from components.networks.registry import CLASSIFIERS
from components.training.steps import accuracy_by_t

SMALL = dict(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,))  # for 32x32 inputs


def n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def digits_net(seed=0, **kw) -> EncoderClassifier:
    torch.manual_seed(seed)
    return EncoderClassifier((1, 28, 28), 10, **kw).eval()


@pytest.mark.parametrize("data_shape, kw", [((1, 28, 28), {}), ((3, 32, 32), SMALL)])
def test_logits_have_shape_batch_by_classes(data_shape, kw):
    torch.manual_seed(0)
    net = EncoderClassifier(data_shape, 10, **kw).eval()
    with torch.no_grad():
        logits = net(torch.randn(3, *data_shape), torch.tensor([0, 500, 999]))
    assert logits.shape == (3, 10)
    assert torch.isfinite(logits).all()


def test_defaults_are_the_digit_configuration():
    """ch 16, levels 28, 14, 7 with attention and the pool at 7x7: a small network for 2 CPU cores."""
    net = digits_net()
    assert len(net.down) == 3 and net.pool.pos.shape == (7 * 7 + 1, 32)
    attends = [not isinstance(level.attns[0], torch.nn.Identity) for level in net.down]
    assert attends == [False, False, True]
    assert n_params(net) == 115_178


def test_a_fresh_network_depends_on_t():
    """The time embedding enters every ResBlock and nothing is zero-initialised, so t changes the logits."""
    net = digits_net()
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        a, b = net(x, torch.full((4,), 10)), net(x, torch.full((4,), 900))
    assert (a - b).abs().max() > 1e-3


def test_each_sample_is_classified_on_its_own():
    """No batch statistics: a sample's logits do not depend on the rest of the batch (guidance and accuracy_by_t
    may split batches)."""
    net = digits_net()
    x, t = torch.randn(5, 1, 28, 28), torch.tensor([3, 100, 400, 700, 999])
    with torch.no_grad():
        assert torch.allclose(net(x, t)[1:3], net(x[1:3], t[1:3]), atol=1e-5)


def test_gradients_reach_x_t():
    """Guidance needs grad_{x_t} log p_phi(y | x_t, t) (ADM Algorithm 1): nonzero, finite, and per sample."""
    net = digits_net()
    x = torch.randn(3, 1, 28, 28, requires_grad=True)
    y = torch.tensor([0, 4, 9])
    log_p = torch.log_softmax(net(x, torch.tensor([50, 300, 800])), -1)[torch.arange(3), y]
    (grad,) = torch.autograd.grad(log_p.sum(), x)
    assert grad.shape == x.shape and torch.isfinite(grad).all()
    assert (grad.flatten(1).abs().amax(1) > 0).all()


def test_attention_pool_keeps_only_the_mean_token_of_full_self_attention():
    """Token 0's query alone gives what full self-attention over the H*W + 1 tokens gives at token 0 (ADM's pool)."""
    torch.manual_seed(0)
    pool = AttentionPool(8, 9, 2, 5)
    h = torch.randn(2, 8, 3, 3)
    tokens = h.flatten(2).transpose(1, 2)
    tokens = torch.cat([tokens.mean(1, keepdim=True), tokens], dim=1) + pool.pos
    q, k, v = pool.qkv(tokens).reshape(2, 10, 3, 2, 4).permute(2, 0, 3, 1, 4)
    full = torch.softmax(q @ k.transpose(-1, -2) / 2.0, -1) @ v  # scale 1/sqrt(4): (B, heads, 10, 4)
    expected = pool.proj(full[:, :, 0].reshape(2, 8))
    assert torch.allclose(pool(h), expected, atol=1e-5)


@pytest.mark.parametrize("kwargs, match", [
    (dict(data_shape=(784,)), r"data_shape must be \(C, H, W\)"),
    (dict(ch=0), r"ch \(0\).*must be positive"),
    (dict(n_classes=0), r"n_classes \(0\).*must be positive"),
    (dict(ch_mult=()), "ch_mult non-empty"),
    (dict(ch_mult=(1, 2, 2, 2)), r"28x28 is not divisible by 2\^\(len\(ch_mult\) - 1\) = 8"),
    (dict(attn_resolutions=(8,)), r"attn_resolutions \(8,\) must be among .*\(28, 14, 7\)"),
    (dict(pool_heads=3), r"pool_heads \(3\) must divide .* = 32"),
])
def test_bad_arguments_name_the_problem(kwargs, match):
    args = {"data_shape": (1, 28, 28), "n_classes": 10, **kwargs}
    with pytest.raises(ValueError, match=match):
        EncoderClassifier(**args)


def test_registered_as_classifier_unet_beside_mlp():
    assert list(CLASSIFIERS) == ["mlp", "unet"]
    net = make_classifier("unet", (1, 28, 28), 10, ch=8, pool_heads=2)
    assert isinstance(net, EncoderClassifier) and net.n_classes == 10 and net.pool.heads == 2
    assert net(torch.randn(2, 1, 28, 28), torch.tensor([1, 2])).shape == (2, 10)


def test_accuracy_by_t_gives_the_same_result_in_any_forward_batch():
    """accuracy_by_t passes the split through the classifier in chunks; the draws of t and noise do not change."""
    net = digits_net(ch=4)
    sched = make_schedule("linear", 1000)
    x0, y = torch.randn(24, 1, 28, 28).clamp(-1, 1), torch.randint(10, (24,))
    whole = accuracy_by_t(net, sched, x0, y, 2, torch.Generator().manual_seed(0), forward_batch=24)
    chunked = accuracy_by_t(net, sched, x0, y, 2, torch.Generator().manual_seed(0), forward_batch=10)
    assert np.array_equal(whole[0], chunked[0]) and np.array_equal(whole[1], chunked[1])
