"""Known coordinates (Sohl-Dickstein et al. 2015 §2.5; inpainting): `impose_known`'s two rules, alone and inside
both samplers, on a tiny random network over (1, 8, 8) images with a short chain."""

import pytest
import torch

from components.math.diffusion import ReverseModel
from components.math.schedules import make_schedule, make_trajectory, respace
from components.networks.mlp import make_network
from components.sampling.guidance import Known, impose_known, inpaint_mask
from components.sampling.samplers import sample_ddim, sample_ddpm

SHAPE = (1, 8, 8)


def _source(n: int) -> torch.Tensor:
    """n distinct source images in model space, (n, 1, 8, 8) in [-1, 1]."""
    return torch.rand((n, *SHAPE), generator=torch.Generator().manual_seed(7)) * 2 - 1


def test_clamp_sets_x0_and_draws_no_noise():
    """Rule clamp is the toy's clamp exactly: torch.where(mask, x0, x), the generator untouched."""
    x, x0 = torch.randn(4, *SHAPE), _source(4)
    known = ~inpaint_mask("bottom", SHAPE)
    g = torch.Generator().manual_seed(3)
    state = g.get_state()
    out = impose_known(x, Known(known, x0), 0.3, g)
    assert torch.equal(out, torch.where(known, x0, x)) and torch.equal(g.get_state(), state)
    assert impose_known(x, None, 0.3, g) is x


def test_noised_is_a_draw_of_the_forward_marginal_from_the_generator():
    """Rule noised: known pixels sqrt(abar) x0 + sqrt(1 - abar) z (DDPM eq. 4), z from the sampler's generator; the
    rest untouched; at abar = 1 exactly x0 and no draw."""
    x, x0, abar = torch.randn(4, *SHAPE), _source(4), 0.3
    known = ~inpaint_mask("square", SHAPE, 4)
    out = impose_known(x, Known(known, x0, "noised"), abar, torch.Generator().manual_seed(5))
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    assert torch.equal(out[:, known], (abar**0.5 * x0 + (1 - abar) ** 0.5 * z)[:, known])
    assert torch.equal(out[:, ~known], x[:, ~known])
    g = torch.Generator().manual_seed(5)
    state = g.get_state()
    assert torch.equal(impose_known(x, Known(known, x0, "noised"), 1.0, g), torch.where(known, x0, x))
    assert torch.equal(g.get_state(), state)


def test_masks_and_rules():
    assert inpaint_mask("bottom", SHAPE)[0, 4:].all() and not inpaint_mask("bottom", SHAPE)[0, :4].any()
    assert inpaint_mask("left", (3, 8, 8))[:, :, :4].all() and not inpaint_mask("left", (3, 8, 8))[:, :, 4:].any()
    square = inpaint_mask("square", (1, 28, 28))
    assert square.sum() == 14 * 14 and square[0, 7:21, 7:21].all()
    assert inpaint_mask("square", SHAPE, 2).sum() == 4 and inpaint_mask("square", SHAPE, 2)[0, 3:5, 3:5].all()
    with pytest.raises(ValueError, match="rule"):
        Known(square, torch.zeros(1, 28, 28), "resample")


def _net():
    torch.manual_seed(0)
    return make_network("mlp", SHAPE, width=32).eval()


SAMPLERS = [(sample_ddpm, {"variance": "small"}), (sample_ddim, {"eta": 0.0}), (sample_ddim, {"eta": 1.0})]


@pytest.mark.parametrize("sampler,kw", SAMPLERS, ids=["ddpm", "ddim", "ddim-eta1"])
def test_both_rules_keep_each_source_and_differ_only_in_the_sampled_pixels(sampler, kw):
    """Per-sample sources (B, C, H, W): each completion's known pixels are its own source's exactly, under both rules;
    the rules' outputs agree there and differ in the sampled pixels (the network saw different inputs)."""
    sched = respace(make_schedule("linear", 100), make_trajectory("uniform", 100, 5))
    x0, hidden = _source(6), inpaint_mask("square", SHAPE)
    model, outs = ReverseModel(_net()), {}
    for rule in ("clamp", "noised"):
        g = torch.Generator().manual_seed(1)
        x_T = torch.randn((6, *SHAPE), generator=g)
        outs[rule] = sampler(model, sched, x_T, generator=g, known=Known(~hidden, x0, rule), **kw)
        assert torch.equal(outs[rule][:, ~hidden], x0[:, ~hidden])
    diff = (outs["clamp"] != outs["noised"])
    assert not diff[:, ~hidden].any() and diff[:, hidden].float().mean() > 0.9


@pytest.mark.parametrize("sampler,kw", SAMPLERS[:2], ids=["ddpm", "ddim"])
def test_noised_known_pixels_sit_at_the_noise_level_of_the_state(sampler, kw):
    """The network's input at each step is the state the previous step produced: with rule noised its known pixels
    are N(sqrt(abar) x0, (1 - abar) I) at that state's abar on the respaced schedule (x_T: alphas_cumprod[-1], the
    state of step i: alphas_cumprod_prev[i]); with clamp, x0. Checked by mean and variance over 512 x 48 pixels."""
    sched = respace(make_schedule("linear", 100), make_trajectory("uniform", 100, 4))
    net, seen = _net(), []
    def spy(x, t):
        seen.append(x.clone())
        return net(x, t)
    hidden, c = inpaint_mask("bottom", SHAPE), 0.5
    x0 = torch.full(SHAPE, c)  # one value for all, broadcast over the batch
    g = torch.Generator().manual_seed(2)
    sampler(ReverseModel(spy), sched, torch.randn((512, *SHAPE), generator=g), generator=g,
            known=Known(~hidden, x0, "noised"), **kw)
    levels = [sched.alphas_cumprod[-1], *sched.alphas_cumprod_prev[len(sched) - 1:0:-1]]  # inputs of steps S-1..0
    assert len(seen) == len(levels) == 4
    for x, abar in zip(seen, levels):
        known = x[:, ~hidden].double()
        assert abs(known.mean() - abar**0.5 * c) < 0.02 and abs(known.var() / (1 - abar) - 1) < 0.05, abar
