"""ADM's noise-aware image classifier p_phi(y | x_t, t) (Dhariwal & Nichol 2021), registered as classifier "unet".

Classifier guidance (ADM §4, Algorithm 1) shifts each sampler step by s Sigma grad_{x_t} log p_phi(y | x_t, t), so
the classifier must read noisy x_t at every t. ADM builds it from its denoiser (§4.1, appendix): "the downsampling
trunk of the UNet with an attention pool at the 8x8 layer to produce the final output". Here the trunk is the
down path of DDPM's UNet (components/networks/unet.py: the same ResBlock with the time embedding added in every
block, AttnBlock and Downsample), followed by its middle ResBlock-Attn-ResBlock and ADM's attention pool; for
28x28 digits the pool reads the 7x7 layer. Weights keep PyTorch's default initialisation (no zero-initialised
output), so a fresh classifier already depends on x_t and t.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from components.networks.mlp import timestep_embedding
from components.networks.unet import AttnBlock, ResBlock, down_path, group_norm, level_resolutions


class AttentionPool(nn.Module):
    """ADM's attention pool (AttentionPool2d, after CLIP's): (B, C, H, W) features -> (B, out_dim).

    The H*W positions become tokens, their mean is prepended as token 0, a learned positional embedding
    (N(0, 1/C) at initialisation, as ADM) is added, and one multi-head self-attention layer runs over the
    H*W + 1 tokens; token 0's output, projected to out_dim, is the result. Only token 0's output is used,
    so only its query is computed: the same result as attending with every token and keeping the first.
    """

    def __init__(self, ch: int, n_tokens: int, heads: int, out_dim: int):
        super().__init__()
        self.heads = heads
        self.pos = nn.Parameter(torch.randn(n_tokens + 1, ch, device="cpu") / ch ** 0.5)  # (H*W + 1, C)
        self.qkv = nn.Linear(ch, 3 * ch)
        self.proj = nn.Linear(ch, out_dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b, c = h.shape[:2]
        tokens = h.flatten(2).transpose(1, 2)  # (B, HW, C)
        tokens = torch.cat([tokens.mean(1, keepdim=True), tokens], dim=1) + self.pos  # (B, HW + 1, C)
        # (3, B, heads, HW + 1, C / heads): per-head queries, keys and values
        q, k, v = self.qkv(tokens).reshape(b, -1, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q[:, :, :1], k, v)  # token 0's query; scale 1/sqrt(C / heads)
        return self.proj(out.reshape(b, c))  # heads concatenated: (B, C) -> (B, out_dim)


class EncoderClassifier(nn.Module):
    """p_phi(y | x_t, t) for images (B, C, H, W): logits (B, n_classes) (ADM §4.1 and appendix).

    conv_in, then level i at resolution H / 2^i with ch * ch_mult[i] channels: num_res_blocks ResBlocks (the
    time embedding added in each), each followed by attention where the level's height is in attn_resolutions,
    and a stride-2 Downsample between levels; a middle ResBlock-Attn-ResBlock at the lowest resolution; then
    GroupNorm, SiLU and ADM's attention pool (`AttentionPool`, pool_heads heads) to the logits. t are the
    diffusion's original timesteps (0..T-1), embedded as in the UNet. The defaults suit 28x28 digits on a CPU:
    levels 28, 14, 7 with attention and the pool at 7x7 (ADM's 8x8 layer), dropout 0 as ADM's classifier.
    """

    def __init__(self, data_shape: tuple[int, ...], n_classes: int, ch: int = 16, ch_mult: tuple[int, ...] = (1, 2, 2),
                 num_res_blocks: int = 1, attn_resolutions: tuple[int, ...] = (7,), dropout: float = 0.0,
                 pool_heads: int = 1):
        super().__init__()
        self.data_shape = tuple(data_shape)
        ch_mult = tuple(ch_mult)
        if n_classes < 1 or ch < 1 or num_res_blocks < 1 or pool_heads < 1 or not ch_mult or min(ch_mult) < 1:
            raise ValueError(f"n_classes ({n_classes}), ch ({ch}), num_res_blocks ({num_res_blocks}), pool_heads "
                             f"({pool_heads}) and every ch_mult entry ({ch_mult}) must be positive, and ch_mult "
                             f"non-empty")
        resolutions = level_resolutions(self.data_shape, ch_mult, attn_resolutions, "encoder")
        cur = ch * ch_mult[-1]  # the pool's channels
        if cur % pool_heads:
            raise ValueError(f"pool_heads ({pool_heads}) must divide the last level's channels "
                             f"ch * ch_mult[-1] = {cur}")
        self.ch, self.n_classes = ch, n_classes
        c_in, height, width = self.data_shape
        temb_dim = 4 * ch
        self.temb_mlp = nn.Sequential(nn.Linear(ch, temb_dim), nn.SiLU(), nn.Linear(temb_dim, temb_dim))
        self.conv_in = nn.Conv2d(c_in, ch, 3, padding=1)
        self.down, self.downsample, _ = down_path(ch, ch_mult, num_res_blocks, temb_dim, dropout,
                                                  [r in tuple(attn_resolutions) for r in resolutions])

        self.mid1 = ResBlock(cur, cur, temb_dim, dropout)
        self.mid_attn = AttnBlock(cur)
        self.mid2 = ResBlock(cur, cur, temb_dim, dropout)

        self.norm_out = group_norm(cur)
        lowest = 2 ** (len(ch_mult) - 1)  # the last level's downsampling
        self.pool = AttentionPool(cur, (height // lowest) * (width // lowest), pool_heads, n_classes)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Logits (B, n_classes) of p_phi(y | x_t, t) from x_t (B, C, H, W) and timesteps t (B,)."""
        temb = self.temb_mlp(timestep_embedding(t, self.ch).to(self.conv_in.weight.dtype))  # (B, 4 ch)
        h = self.conv_in(x)  # (B, ch, H, W)
        for level, downsample in zip(self.down, self.downsample):
            for block, attn in zip(level.blocks, level.attns):
                h = attn(block(h, temb))
            h = downsample(h)  # (B, C_i, H_i / 2, W_i / 2) between levels; identity after the last
        h = self.mid2(self.mid_attn(self.mid1(h, temb)), temb)  # (B, C_last, H / 2^(L-1), W / 2^(L-1))
        return self.pool(F.silu(self.norm_out(h)))  # (B, n_classes)
