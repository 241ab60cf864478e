"""Denoising networks (`NETWORKS`), noise-aware classifiers (`CLASSIFIERS`) and DDGAN's generators
and discriminators (`GENERATORS`, `DISCRIMINATORS`), chosen by name. They know nothing about noise schedules.
The registries (components/networks/registry.py) name the MLPs defined here for flat data (points), DDPM's UNet
(unet.py) as network "unet", and ADM's image classifier, that UNet's downsampling trunk with an attention pool
(encoder.py), as classifier "unet".

Every network maps (x_t (B, C, ...), t (B,) timesteps) -> output of x_t's shape times
`out_mult` along the channel axis: eps (out_mult 1), or eps then v (out_mult 2, iDDPM's learned
variance; split in `diffusion.split_output`). The output layer comes last in the state dict's
row order: its first rows produce eps, the rest v. Every classifier maps the same inputs to
logits (B, n_classes) of p_phi(y | x_t, t) (classifier guidance, ADM §4). A DDGAN generator maps
(x_t, t, z (B, nz)) -> x0-hat of x_t's shape and says its latent size as `nz`; a DDGAN discriminator maps
(x_{t-1}, x_t, t) -> one logit per sample (B,). There t is the schedule index of x_t.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from components.networks.registry import CLASSIFIERS, DISCRIMINATORS, GENERATORS, NETWORKS  # they name the classes below


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of timesteps (Transformer PE, as in DDPM's UNet): (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def fourier_features(x: torch.Tensor, octaves: int) -> torch.Tensor:
    """[x, sin(2^k pi x), cos(2^k pi x) for k < octaves] per coordinate: (B, d) -> (B, d (1 + 2 octaves)).

    A positional encoding for low-dimensional inputs (Tancik et al. 2020, "Fourier features let
    networks learn high frequency functions"): with it an MLP on 2-D points can resolve structure
    far finer than its input's scale, such as modes of std 0.02 on a unit-variance grid.
    """
    if octaves == 0:
        return x
    freqs = math.pi * 2.0 ** torch.arange(octaves, dtype=x.dtype, device=x.device)  # (octaves,)
    args = (x[:, :, None] * freqs).flatten(1)  # (B, d * octaves)
    return torch.cat([x, torch.sin(args), torch.cos(args)], dim=1)


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


class PixelNorm(nn.Module):
    """z / sqrt(mean(z^2) + 1e-8) along the features: the mapping network's input normalisation (StyleGAN, DDGAN)."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z * torch.rsqrt(z.pow(2).mean(-1, keepdim=True) + 1e-8)


def mapping_network(nz: int, zemb_dim: int, depth: int) -> nn.Sequential:
    """DDGAN's (and StyleGAN's) mapping network z (B, nz) -> w (B, zemb_dim): PixelNorm, then `depth` SiLU layers."""
    layers: list[nn.Module] = [PixelNorm()]
    for i in range(depth):
        layers += [nn.Linear(nz if i == 0 else zemb_dim, zemb_dim), nn.SiLU()]
    return nn.Sequential(*layers)


class AdaptiveResidualBlock(ResidualBlock):
    """ResidualBlock whose LayerNorm is modulated by the latent's embedding w: scale (1 + gamma(w)), shift beta(w).

    DDGAN's generator injects z this way (adaptive GroupNorm in every residual block, as StyleGAN's
    AdaIN), while t enters additively, as in the eps-network.
    """

    def __init__(self, width: int, temb_dim: int, zemb_dim: int):
        super().__init__(width, temb_dim)
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.style = nn.Linear(zemb_dim, 2 * width)

    def forward(self, h: torch.Tensor, temb: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.style(w).chunk(2, dim=-1)  # (B, width) each
        z = self.fc1(torch.nn.functional.silu(self.norm(h) * (1 + gamma) + beta)) + self.temb(temb)
        return h + self.fc2(torch.nn.functional.silu(z))


class MLPGenerator(nn.Module):
    """DDGAN's generator G(x_t, z, t) -> x0-hat for flat data (Xiao et al. 2022, §3.3).

    z ~ N(0, I_nz) goes through a mapping network (PixelNorm, then `mapping_depth` SiLU layers)
    to w, which modulates every residual block's norm; t gets the sinusoidal embedding. The
    output is x0-hat, not x_{t-1}: the sampler draws x_{t-1} from q(x_{t-1} | x_t, x0-hat).
    """

    def __init__(self, data_shape: tuple[int, ...], nz: int = 16, width: int = 128, depth: int = 3,
                 temb_dim: int = 64, zemb_dim: int = 64, mapping_depth: int = 2, fourier_octaves: int = 0):
        super().__init__()
        self.data_shape = tuple(data_shape)
        self.nz, self.temb_dim, self.fourier_octaves = nz, temb_dim, fourier_octaves
        d = math.prod(self.data_shape)
        self.mapping = mapping_network(nz, zemb_dim, mapping_depth)
        self.temb_mlp = nn.Sequential(nn.Linear(temb_dim, temb_dim), nn.SiLU(), nn.Linear(temb_dim, temb_dim))
        self.inp = nn.Linear(d * (1 + 2 * fourier_octaves), width)
        self.blocks = nn.ModuleList(AdaptiveResidualBlock(width, temb_dim, zemb_dim) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, d))

    def forward(self, x: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """x0-hat (B, ...) from x_t (B, ...), schedule indices t (B,) and latents z (B, nz)."""
        temb = self.temb_mlp(timestep_embedding(t, self.temb_dim).to(self.inp.weight.dtype))  # (B, temb_dim)
        w = self.mapping(z)  # (B, zemb_dim)
        h = self.inp(fourier_features(x.reshape(len(x), -1), self.fourier_octaves))  # (B, width)
        for block in self.blocks:
            h = block(h, temb, w)
        return self.out(h).reshape(len(x), *self.data_shape)


class MLPDiscriminator(nn.Module):
    """DDGAN's discriminator D(x_{t-1}, x_t, t) -> logit for flat data: is x_{t-1} a plausible denoising of x_t?

    Both inputs are concatenated (DDGAN's 6-channel input for images) and t enters additively
    through its sinusoidal embedding; residual leaky-ReLU blocks without normalisation (as DDGAN's
    discriminator), so the R1 penalty sees a plain function of its input.
    """

    def __init__(self, data_shape: tuple[int, ...], width: int = 128, depth: int = 2, temb_dim: int = 64,
                 fourier_octaves: int = 0):
        super().__init__()
        self.temb_dim, self.fourier_octaves = temb_dim, fourier_octaves
        d = math.prod(tuple(data_shape))
        self.temb_mlp = nn.Sequential(nn.Linear(temb_dim, temb_dim), nn.LeakyReLU(0.2), nn.Linear(temb_dim, temb_dim))
        self.inp = nn.Linear(2 * d * (1 + 2 * fourier_octaves), width)
        self.temb = nn.ModuleList(nn.Linear(temb_dim, width) for _ in range(depth))
        self.fc1 = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.fc2 = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.out = nn.Linear(width, 1)

    def forward(self, x_prev: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """One logit per sample (B,) for pairs (x_{t-1}, x_t) (B, ...) at schedule indices t (B,)."""
        act = torch.nn.functional.leaky_relu
        temb = self.temb_mlp(timestep_embedding(t, self.temb_dim).to(self.inp.weight.dtype))  # (B, temb_dim)
        pair = torch.cat([x_prev.reshape(len(x_prev), -1), x_t.reshape(len(x_t), -1)], dim=1)  # (B, 2d)
        h = self.inp(fourier_features(pair, self.fourier_octaves))  # (B, width)
        for temb_proj, fc1, fc2 in zip(self.temb, self.fc1, self.fc2):
            h = (h + fc2(act(fc1(act(h, 0.2)) + temb_proj(temb), 0.2))) / math.sqrt(2)  # DDGAN's skip rescale
        return self.out(act(h, 0.2)).squeeze(-1)


class LeakyMLP(nn.Module):
    """`depth` Linear + LeakyReLU(0.2) layers of `width`, the sinusoidal time embedding's projection added after
    the first, no normalisation: the trunk of the plain DDGAN networks below. (B, in_dim), (B,) -> (B, width)."""

    def __init__(self, in_dim: int, width: int, depth: int, temb_dim: int):
        super().__init__()
        self.temb_dim = temb_dim
        self.temb = nn.Linear(temb_dim, width)
        self.layers = nn.ModuleList(nn.Linear(in_dim if i == 0 else width, width) for i in range(depth))

    def forward(self, h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        temb = self.temb(timestep_embedding(t, self.temb_dim).to(h.dtype))  # (B, width)
        for i, layer in enumerate(self.layers):
            h = torch.nn.functional.leaky_relu(layer(h) + (temb if i == 0 else 0), 0.2)
        return h


class PlainMLPGenerator(nn.Module):
    """DDGAN's generator G(x_t, z, t) -> x0-hat as a plain MLP: [Fourier features of x_t, z] into a `LeakyMLP`.

    No mapping network: z enters as input coordinates, so a low-dimensional z (nz 1 or 2) can be folded
    directly onto the modes. The toy-scale shape of public 2-D DDGANs (3 x 128 LeakyReLU MLPs); DDGAN's
    CIFAR-10 generator is a NCSN++ UNet with z through a mapping network (`MLPGenerator` keeps that design).
    """

    def __init__(self, data_shape: tuple[int, ...], nz: int = 2, width: int = 128, depth: int = 3,
                 temb_dim: int = 64, fourier_octaves: int = 0):
        super().__init__()
        self.data_shape = tuple(data_shape)
        self.nz, self.fourier_octaves = nz, fourier_octaves
        d = math.prod(self.data_shape)
        self.trunk = LeakyMLP(d * (1 + 2 * fourier_octaves) + nz, width, depth, temb_dim)
        self.out = nn.Linear(width, d)

    def forward(self, x: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """x0-hat (B, ...) from x_t (B, ...), schedule indices t (B,) and latents z (B, nz)."""
        h = torch.cat([fourier_features(x.reshape(len(x), -1), self.fourier_octaves), z.to(x.dtype)], dim=1)
        return self.out(self.trunk(h, t)).reshape(len(x), *self.data_shape)


class PlainMLPDiscriminator(nn.Module):
    """DDGAN's discriminator D(x_{t-1}, x_t, t) -> logit as a plain MLP: the pair's Fourier features into a `LeakyMLP`.

    The pair (x_{t-1}, x_t) is concatenated (DDGAN's 6-channel input for images); without normalisation the
    R1 penalty sees a plain function of its input.
    """

    def __init__(self, data_shape: tuple[int, ...], width: int = 128, depth: int = 3, temb_dim: int = 64,
                 fourier_octaves: int = 0):
        super().__init__()
        self.fourier_octaves = fourier_octaves
        d = math.prod(tuple(data_shape))
        self.trunk = LeakyMLP(2 * d * (1 + 2 * fourier_octaves), width, depth, temb_dim)
        self.out = nn.Linear(width, 1)

    def forward(self, x_prev: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """One logit per sample (B,) for pairs (x_{t-1}, x_t) (B, ...) at schedule indices t (B,)."""
        pair = torch.cat([x_prev.reshape(len(x_prev), -1), x_t.reshape(len(x_t), -1)], dim=1)  # (B, 2d)
        return self.out(self.trunk(fourier_features(pair, self.fourier_octaves), t)).squeeze(-1)



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


def make_generator(name: str, data_shape: tuple[int, ...], **kwargs) -> nn.Module:
    """Instantiate the named DDGAN generator G(x_t, t, z) -> x0-hat."""
    if name not in GENERATORS:
        raise ValueError(f"unknown generator {name!r}; allowed: {', '.join(GENERATORS)}")
    return GENERATORS[name](tuple(data_shape), **kwargs)


def make_discriminator(name: str, data_shape: tuple[int, ...], **kwargs) -> nn.Module:
    """Instantiate the named DDGAN discriminator D(x_{t-1}, x_t, t) -> logit."""
    if name not in DISCRIMINATORS:
        raise ValueError(f"unknown discriminator {name!r}; allowed: {', '.join(DISCRIMINATORS)}")
    return DISCRIMINATORS[name](tuple(data_shape), **kwargs)
