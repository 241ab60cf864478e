"""DDGAN's image networks (Xiao, Kreis & Vahdat 2022, §3.3 and appendix C): the generator G(x_t, t, z) -> x0-hat,
registered as generator "unet", and the time-conditioned discriminator D(x_{t-1}, x_t, t), as discriminator "conv".

DDGAN's generator is NCSN++ with the latent z injected through a mapping network into adaptive GroupNorm in every
residual block; here the same idea sits on DDPM's UNet (components/networks/unet.py), whose ResBlocks gain that
adaptive norm (`ResBlock.adapt_to_latent`). Its discriminator is a stack of downsampling residual conv blocks on
the pair (x_{t-1}, x_t) concatenated along channels, t added to every block through its embedding, leaky ReLU and
no normalisation (R1 then penalises a plain function of the input), a minibatch standard-deviation channel
(StyleGAN's, which DDGAN keeps) and a linear head on the features summed over positions. Both run on images at
any size their levels divide: 28x28 digits work as they are (levels 28, 14, 7), without DDGAN's padding to 32x32.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from components.networks.mlp import mapping_network, timestep_embedding
from components.networks.unet import ResBlock, UNet


class UNetGenerator(UNet):
    """DDGAN's G(x_t, t, z) -> x0-hat for images (B, C, H, W): DDPM's UNet whose every ResBlock's second GroupNorm
    is modulated by w = mapping(z) (adaptive GroupNorm, DDGAN's NCSN++), z ~ N(0, I_nz), t the schedule index.

    The output is x0-hat in [-1, 1], the images' range, through a tanh as DDGAN's generator; not x_{t-1}: the
    sampler draws x_{t-1} from q(x_{t-1} | x_t, x0-hat) (DDGAN eq. 9). The
    defaults suit 28x28 digits on a CPU; DDGAN's CIFAR-10 generator is NCSN++ at ch 64, ch_mult (1, 2, 2, 2), two
    blocks a level, nz 100, zemb_dim 256 and a 4-layer mapping network (appendix C).
    """

    def __init__(self, data_shape: tuple[int, ...], nz: int = 32, ch: int = 16, ch_mult: tuple[int, ...] = (1, 2, 2),
                 num_res_blocks: int = 1, attn_resolutions: tuple[int, ...] = (), dropout: float = 0.0,
                 zemb_dim: int = 64, mapping_depth: int = 2):
        if nz < 1 or zemb_dim < 1 or mapping_depth < 1:
            raise ValueError(f"nz ({nz}), zemb_dim ({zemb_dim}) and mapping_depth ({mapping_depth}) must be positive")
        super().__init__(data_shape, ch=ch, ch_mult=ch_mult, num_res_blocks=num_res_blocks,
                         attn_resolutions=attn_resolutions, dropout=dropout)
        for block in self.modules():
            if isinstance(block, ResBlock):
                block.adapt_to_latent(zemb_dim)
        self.nz = nz
        self.mapping = mapping_network(nz, zemb_dim, mapping_depth)

    def forward(self, x: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """x0-hat (B, C, H, W) from x_t (B, C, H, W), schedule indices t (B,) and latents z (B, nz)."""
        return torch.tanh(self.run(x, t, self.mapping(z)))  # images lie in [-1, 1] (DDGAN's tanh output)


class DownBlock(nn.Module):
    """DDGAN's discriminator block: leaky ReLU, conv, + time projection per channel, leaky ReLU, [avg-pool /2], conv,
    added to the (pooled, 1x1-projected) input and scaled by 1/sqrt(2) (DDGAN's skip rescale)."""

    def __init__(self, in_ch: int, out_ch: int, temb_dim: int, downsample: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.temb_proj = nn.Linear(temb_dim, out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1, bias=False)
        self.downsample = downsample

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.leaky_relu(x, 0.2)) + self.temb_proj(temb)[:, :, None, None]  # (B, out_ch, H, W)
        h = F.leaky_relu(h, 0.2)
        if self.downsample:
            h, x = F.avg_pool2d(h, 2), F.avg_pool2d(x, 2)  # (B, ., H / 2, W / 2), floor for odd sizes
        return (self.conv2(h) + self.skip(x)) / math.sqrt(2)


def minibatch_stddev(h: torch.Tensor, group: int) -> torch.Tensor:
    """StyleGAN's minibatch standard deviation: h (B, C, H, W) with one more channel holding, for each sample, the
    mean over features of the std across its group of `group` samples (the whole batch where it does not divide)."""
    b, c, height, width = h.shape
    g = group if b % group == 0 else b
    std = h.reshape(g, b // g, c, height, width).float().var(0, unbiased=False).add(1e-8).sqrt()  # (B/g, C, H, W)
    std = std.mean(dim=(1, 2, 3)).to(h.dtype).repeat(g)[:, None, None, None]  # (B, 1, 1, 1): sample i in group i % (B/g)
    return torch.cat([h, std.expand(b, 1, height, width)], dim=1)


class ConvDiscriminator(nn.Module):
    """DDGAN's D(x_{t-1}, x_t, t) -> one logit per sample (B,) for images: is x_{t-1} a plausible denoising of x_t?

    The pair enters as 2C channels through a 1x1 conv; level i has ch * ch_mult[i] channels, every level but the
    first halving the resolution; t's sinusoidal embedding goes through a 2-layer leaky-ReLU MLP into every block;
    then the minibatch-stddev channel (groups of `stddev_group`), a 3x3 conv, leaky ReLU, the sum over positions and
    a linear head. DDGAN's small-image discriminator is this at ch 64 (ngf), ch_mult (1, 2, 4, 8) with its first
    block at ngf * 2, temb_dim 128.
    """

    def __init__(self, data_shape: tuple[int, ...], ch: int = 32, ch_mult: tuple[int, ...] = (1, 2, 2),
                 temb_dim: int = 64, stddev_group: int = 4):
        super().__init__()
        ch_mult = tuple(ch_mult)
        if ch < 1 or temb_dim < 2 or stddev_group < 1 or not ch_mult or min(ch_mult) < 1:
            raise ValueError(f"ch ({ch}), stddev_group ({stddev_group}) and every ch_mult entry ({ch_mult}) must be "
                             f"positive, temb_dim ({temb_dim}) at least 2, and ch_mult non-empty")
        if len(data_shape) != 3:
            raise ValueError(f"data_shape must be (C, H, W); got {tuple(data_shape)}")
        if min(data_shape[1:]) < 2 ** (len(ch_mult) - 1):
            raise ValueError(f"{len(ch_mult)} levels halve {data_shape[1]}x{data_shape[2]} images below one pixel")
        self.temb_dim, self.stddev_group = temb_dim, stddev_group
        self.temb_mlp = nn.Sequential(nn.Linear(temb_dim, temb_dim), nn.LeakyReLU(0.2), nn.Linear(temb_dim, temb_dim),
                                      nn.LeakyReLU(0.2))
        self.conv_in = nn.Conv2d(2 * data_shape[0], ch * ch_mult[0], 1)
        widths = [ch * m for m in ch_mult]
        self.blocks = nn.ModuleList(DownBlock(widths[max(i - 1, 0)], w, temb_dim, downsample=i > 0)
                                    for i, w in enumerate(widths))
        self.conv_out = nn.Conv2d(widths[-1] + 1, widths[-1], 3, padding=1)
        self.head = nn.Linear(widths[-1], 1)

    def forward(self, x_prev: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """One logit per sample (B,) for pairs (x_{t-1}, x_t) (B, C, H, W) at schedule indices t (B,)."""
        temb = self.temb_mlp(timestep_embedding(t, self.temb_dim).to(self.conv_in.weight.dtype))  # (B, temb_dim)
        h = self.conv_in(torch.cat([x_prev, x_t], dim=1))  # (B, ch, H, W)
        for block in self.blocks:
            h = block(h, temb)
        h = F.leaky_relu(self.conv_out(minibatch_stddev(h, self.stddev_group)), 0.2)
        return self.head(h.sum(dim=(2, 3))).squeeze(-1)
