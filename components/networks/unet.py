"""DDPM's UNet eps_theta(x_t, t) for images (Ho et al. 2020, appendix B), registered as network "unet".

A PixelCNN++-style UNet: wide residual blocks with the time embedding added per channel, single-head
self-attention at chosen resolutions, GroupNorm with 32 groups (fewer in layers under 128 channels).
DDPM's CIFAR-10 configuration (ch 128, ch_mult (1, 2, 2, 2), two blocks per level, attention at
16x16, dropout 0.1) has 35,746,307 parameters, as the widely used PyTorch port of DDPM's model.
With out_mult 2 the output has eps then iDDPM's v (Nichol & Dhariwal 2021, §3.1); only conv_out
grows, and `diffusion.split_output` splits it. Weights keep PyTorch's default initialisation (no
zero-initialised output convs), so a fresh network already depends on x and t.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from components.networks.mlp import timestep_embedding


def norm_groups(channels: int) -> int:
    """DDPM's 32 GroupNorm groups where they divide the channels and keep at least 4 channels each (as DDPM's
    narrowest, 128 channels), else the largest power of two that does both (1 if none): 16 channels get 4 groups.

    Groups of one channel would be instance norm, which removes the per-channel time bias a ResBlock adds
    just before its second norm: a width-16 or -32 UNet with 32 groups would ignore t at those widths.
    """
    groups = math.gcd(32, channels)
    while groups > 1 and channels // groups < 4:
        groups //= 2
    return groups


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm(norm_groups(channels)) with DDPM's eps 1e-6."""
    return nn.GroupNorm(norm_groups(channels), channels, eps=1e-6)


class ResBlock(nn.Module):
    """DDPM's residual block: norm, SiLU, conv, + time projection per channel, norm, SiLU, dropout, conv, + skip.

    `adapt_to_latent` turns the second norm adaptive, for DDGAN's generator (components/networks/generator.py).
    """

    def __init__(self, in_ch: int, out_ch: int, temb_dim: int, dropout: float):
        super().__init__()
        self.norm1 = group_norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.temb_proj = nn.Linear(temb_dim, out_ch)
        self.norm2 = group_norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        # a 1x1 conv matches the channels only where they change (DDPM's nin_shortcut)
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        self.style: nn.Linear | None = None

    def adapt_to_latent(self, zemb_dim: int) -> None:
        """Make the second norm adaptive: GroupNorm without an affine of its own, scaled by (1 + gamma(w)) and
        shifted by beta(w) per channel from a latent's embedding w (B, zemb_dim): DDGAN's AdaptiveGroupNorm in its
        NCSN++ generator, after StyleGAN's AdaIN."""
        out_ch = self.conv2.out_channels
        self.norm2 = nn.GroupNorm(norm_groups(out_ch), out_ch, eps=1e-6, affine=False)
        self.style = nn.Linear(zemb_dim, 2 * out_ch)

    def forward(self, x: torch.Tensor, temb: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, out_ch, H, W)
        h = h + self.temb_proj(F.silu(temb))[:, :, None, None]  # time enters as a per-channel bias
        h = self.norm2(h)
        if self.style is not None:  # the latent enters as a per-channel scale and shift (adaptive GroupNorm)
            gamma, beta = self.style(w)[:, :, None, None].chunk(2, dim=1)  # (B, out_ch, 1, 1) each
            h = h * (1 + gamma) + beta
        h = self.conv2(self.dropout(F.silu(h)))
        return self.shortcut(x) + h


class AttnBlock(nn.Module):
    """DDPM's self-attention over pixels: single head, softmax(q k^T / sqrt(C)) v, 1x1 convs, residual."""

    def __init__(self, ch: int):
        super().__init__()
        self.norm = group_norm(ch)
        self.q = nn.Conv2d(ch, ch, 1)
        self.k = nn.Conv2d(ch, ch, 1)
        self.v = nn.Conv2d(ch, ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, height, width = x.shape
        h = self.norm(x)
        # (B, 1, HW, C): one head whose tokens are the pixels
        q, k, v = (f(h).reshape(b, 1, c, height * width).transpose(-1, -2) for f in (self.q, self.k, self.v))
        h = F.scaled_dot_product_attention(q, k, v)  # default scale 1/sqrt(C); (B, 1, HW, C)
        h = h.transpose(-1, -2).reshape(b, c, height, width)
        return x + self.proj(h)


class Downsample(nn.Module):
    """Halve the resolution with a stride-2 3x3 conv (DDPM's resamp_with_conv): (B, C, H, W) -> (B, C, H/2, W/2)."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Double the resolution: nearest-neighbour x2 then a 3x3 conv: (B, C, H, W) -> (B, C, 2H, 2W)."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution of the UNet: residual blocks, each followed by attention where the resolution asks for it."""

    def __init__(self, blocks: list[ResBlock], attend: bool):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.attns = nn.ModuleList(AttnBlock(b.conv2.out_channels) if attend else nn.Identity() for b in blocks)


def level_resolutions(data_shape: tuple[int, ...], ch_mult: tuple[int, ...], attn_resolutions: tuple[int, ...],
                      network: str) -> list[int]:
    """The height at each level of a UNet-shaped `network` on images of data_shape (C, H, W), each level halving the
    last; ValueError where the shape is not (C, H, W), the levels do not divide the image, or an attention
    resolution is not a level's (it would silently give a network without attention)."""
    if len(data_shape) != 3:
        raise ValueError(f"data_shape must be (C, H, W); got {tuple(data_shape)}")
    _, height, width = data_shape
    factor = 2 ** (len(ch_mult) - 1)
    if height % factor or width % factor:
        raise ValueError(f"image size {height}x{width} is not divisible by 2^(len(ch_mult) - 1) = {factor}: "
                         f"{len(ch_mult)} levels halve it {len(ch_mult) - 1} times")
    resolutions = [height // 2 ** i for i in range(len(ch_mult))]
    if not set(attn_resolutions) <= set(resolutions):
        raise ValueError(f"attn_resolutions {tuple(attn_resolutions)} must be among this {network}'s resolutions "
                         f"{tuple(resolutions)} (the height at each level)")
    return resolutions


def down_path(ch: int, ch_mult: tuple[int, ...], num_res_blocks: int, temb_dim: int, dropout: float,
              attend: list[bool]) -> tuple[nn.ModuleList, nn.ModuleList, list[int]]:
    """DDPM's down path (shared by the UNet and ADM's encoder classifier): level i has num_res_blocks ResBlocks of
    ch * ch_mult[i] channels, with attention where attend[i], and a stride-2 Downsample after every level but the
    last (Identity there). Returns the levels, the downsamples and the channels of every output the path stores as a
    skip, in order: conv_in's (ch), each block's, each Downsample's; the last is the path's output width."""
    skips, cur = [ch], ch
    levels, downsamples = nn.ModuleList(), nn.ModuleList()
    for i, mult in enumerate(ch_mult):
        blocks = []
        for _ in range(num_res_blocks):
            blocks.append(ResBlock(cur, ch * mult, temb_dim, dropout))
            cur = ch * mult
            skips.append(cur)
        levels.append(Level(blocks, attend[i]))
        last = i == len(ch_mult) - 1
        downsamples.append(nn.Identity() if last else Downsample(cur))
        if not last:
            skips.append(cur)
    return levels, downsamples, skips


class UNet(nn.Module):
    """eps_theta(x_t, t) for images (B, C, H, W): DDPM's UNet (Ho et al. 2020, appendix B).

    Level i works at resolution H / 2^i with ch * ch_mult[i] channels; the down path stores every
    block's output as a skip, the up path (num_res_blocks + 1 blocks a level) consumes them by
    concatenation along channels. t are the diffusion's original timesteps; out_mult 2 adds iDDPM's v.
    """

    def __init__(self, data_shape: tuple[int, ...], ch: int = 128, ch_mult: tuple[int, ...] = (1, 2, 2, 2),
                 num_res_blocks: int = 2, attn_resolutions: tuple[int, ...] = (16,), dropout: float = 0.1,
                 out_mult: int = 1):
        super().__init__()
        self.data_shape = tuple(data_shape)
        ch_mult = tuple(ch_mult)
        if ch < 1 or num_res_blocks < 1 or out_mult < 1 or not ch_mult or min(ch_mult) < 1:
            raise ValueError(f"ch ({ch}), num_res_blocks ({num_res_blocks}), out_mult ({out_mult}) and every "
                             f"ch_mult entry ({ch_mult}) must be positive, and ch_mult non-empty")
        resolutions = level_resolutions(self.data_shape, ch_mult, attn_resolutions, "UNet")
        # GroupNorm's group counts (norm_groups) divide every channel count by construction: nothing to check.
        self.ch, self.out_mult = ch, out_mult
        c_in = self.data_shape[0]
        temb_dim = 4 * ch
        self.temb_mlp = nn.Sequential(nn.Linear(ch, temb_dim), nn.SiLU(), nn.Linear(temb_dim, temb_dim))
        self.conv_in = nn.Conv2d(c_in, ch, 3, padding=1)

        # channels of every stored skip, in the order the down path stores them
        self.down, self.downsample, skips = down_path(ch, ch_mult, num_res_blocks, temb_dim, dropout,
                                                      [r in tuple(attn_resolutions) for r in resolutions])
        cur = skips[-1]

        self.mid1 = ResBlock(cur, cur, temb_dim, dropout)
        self.mid_attn = AttnBlock(cur)
        self.mid2 = ResBlock(cur, cur, temb_dim, dropout)

        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for i, mult in reversed(list(enumerate(ch_mult))):
            blocks = []
            for _ in range(num_res_blocks + 1):
                blocks.append(ResBlock(cur + skips.pop(), ch * mult, temb_dim, dropout))
                cur = ch * mult
            self.up.append(Level(blocks, resolutions[i] in attn_resolutions))
            self.upsample.append(Upsample(cur) if i > 0 else nn.Identity())

        self.norm_out = group_norm(cur)
        self.conv_out = nn.Conv2d(cur, c_in * out_mult, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """eps (out_mult 1) or eps then v (out_mult 2) of shape (B, C * out_mult, H, W), from x_t (B, C, H, W)."""
        return self.run(x, t, None)

    def run(self, x: torch.Tensor, t: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
        """The network on x_t (B, C, H, W) at timesteps t (B,), every block reading the latent's embedding w where
        its norm is adaptive (DDGAN's generator; None for a denoiser): (B, C * out_mult, H, W)."""
        temb = self.temb_mlp(timestep_embedding(t, self.ch).to(self.conv_in.weight.dtype))  # (B, 4 ch)
        hs = [self.conv_in(x)]  # (B, ch, H, W)
        for level, downsample in zip(self.down, self.downsample):
            for block, attn in zip(level.blocks, level.attns):
                hs.append(attn(block(hs[-1], temb, w)))
            if not isinstance(downsample, nn.Identity):  # structural, fixed at construction
                hs.append(downsample(hs[-1]))  # (B, C_i, H_i / 2, W_i / 2)
        h = self.mid2(self.mid_attn(self.mid1(hs[-1], temb, w)), temb, w)  # (B, C_last, H / 2^(L-1), W / 2^(L-1))
        for level, upsample in zip(self.up, self.upsample):
            for block, attn in zip(level.blocks, level.attns):
                h = attn(block(torch.cat([h, hs.pop()], dim=1), temb, w))
            h = upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, C * out_mult, H, W)
