"""Denoising networks (`NETWORKS`) and noise-aware classifiers (`CLASSIFIERS`), chosen by name.
They know nothing about noise schedules.

Every network maps (x_t (B, C, ...), t (B,) timesteps) -> output of x_t's shape times
`out_mult` along the channel axis: eps (out_mult 1), or eps then v (out_mult 2, iDDPM's learned
variance; split in `diffusion.split_output`). The output layer comes last in the state dict's
row order: its first rows produce eps, the rest v. Every classifier maps the same inputs to
logits (B, n_classes) of p_phi(y | x_t, t) (classifier guidance, ADM §4).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of timesteps (Transformer PE, as in DDPM's UNet): (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ResidualBlock(nn.Module):
    """h + Linear(SiLU(LayerNorm(h) + time projection)): a pre-norm residual block with additive time conditioning."""

    def __init__(self, width: int, temb_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.temb = nn.Linear(temb_dim, width)
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)

    def forward(self, h: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        z = self.fc1(torch.nn.functional.silu(self.norm(h))) + self.temb(temb)
        return h + self.fc2(torch.nn.functional.silu(z))


class MLP(nn.Module):
    """eps_theta(x_t, t) for flat data (points): sinusoidal time embedding + residual SiLU MLP."""

    def __init__(self, data_shape: tuple[int, ...], width: int = 256, depth: int = 3, temb_dim: int = 128,
                 out_mult: int = 1):
        super().__init__()
        self.data_shape = tuple(data_shape)
        self.out_mult = out_mult
        d = math.prod(self.data_shape)
        self.temb_dim = temb_dim
        self.temb_mlp = nn.Sequential(nn.Linear(temb_dim, temb_dim), nn.SiLU(), nn.Linear(temb_dim, temb_dim))
        self.inp = nn.Linear(d, width)
        self.blocks = nn.ModuleList(ResidualBlock(width, temb_dim) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, d * out_mult))

    def trunk(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The time-conditioned residual trunk: (B, ...) and (B,) -> features (B, width)."""
        temb = self.temb_mlp(timestep_embedding(t, self.temb_dim).to(self.inp.weight.dtype))  # (B, temb_dim)
        h = self.inp(x.reshape(len(x), -1))  # (B, width)
        for block in self.blocks:
            h = block(h, temb)
        return h

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = self.out(self.trunk(x, t))  # (B, d * out_mult)
        return out.reshape(len(x), self.data_shape[0] * self.out_mult, *self.data_shape[1:])


class MLPClassifier(MLP):
    """Noise-aware classifier p_phi(y | x_t, t) for flat data: MLP's trunk with a logits head (ADM §4.1).

    ADM's classifier is its UNet's downsampling half with an attention pool; for points the
    trunk is the same time-conditioned residual MLP as eps_theta's, so it sees t the same way.
    """

    def __init__(self, data_shape: tuple[int, ...], n_classes: int, width: int = 128, depth: int = 2,
                 temb_dim: int = 64):
        super().__init__(data_shape, width=width, depth=depth, temb_dim=temb_dim)
        self.n_classes = n_classes
        self.out = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, n_classes))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Logits (B, n_classes) of p_phi(y | x_t, t); t are the diffusion's original timesteps."""
        return self.out(self.trunk(x, t))


NETWORKS: dict[str, type[nn.Module]] = {"mlp": MLP}
CLASSIFIERS: dict[str, type[nn.Module]] = {"mlp": MLPClassifier}


def add_variance_output(eps_state: dict[str, torch.Tensor], net: nn.Module) -> None:
    """Load an eps-only network's weights into the same network built with out_mult=2 (iDDPM fine-tuning).

    Shared tensors are copied; the output layer's extra rows (the v head) start at zero, so
    v = 0, frac = 1/2, and Sigma starts at the geometric mean of beta-tilde_t and beta_t
    (iDDPM eq. 15): between the two fixed variances, as the eps model's own samplers had them.
    """
    state = net.state_dict()
    if set(state) != set(eps_state):
        raise ValueError(f"parameter names differ: {sorted(set(state) ^ set(eps_state))[:3]}")
    for k, w in eps_state.items():
        if state[k].shape == w.shape:
            state[k] = w
        elif state[k].shape[0] == 2 * w.shape[0] and state[k].shape[1:] == w.shape[1:]:
            state[k] = torch.cat([w, torch.zeros_like(w)])  # eps rows as trained, v rows zero
        else:
            raise ValueError(f"{k}: shape {tuple(w.shape)} cannot grow to {tuple(state[k].shape)}")
    net.load_state_dict(state)


def make_network(name: str, data_shape: tuple[int, ...], **kwargs) -> nn.Module:
    """Instantiate the named network for data of the given per-sample shape."""
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; allowed: {', '.join(NETWORKS)}")
    return NETWORKS[name](tuple(data_shape), **kwargs)


def make_classifier(name: str, data_shape: tuple[int, ...], n_classes: int, **kwargs) -> nn.Module:
    """Instantiate the named noise-aware classifier for data of the given per-sample shape."""
    if name not in CLASSIFIERS:
        raise ValueError(f"unknown classifier {name!r}; allowed: {', '.join(CLASSIFIERS)}")
    return CLASSIFIERS[name](tuple(data_shape), n_classes, **kwargs)
