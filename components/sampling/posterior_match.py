"""Does a DDGAN generator draw from the true posterior q(x0 | x_t)? A per-step diagnostic on a Gaussian mixture.

DDGAN's denoising step t is p_theta(x_{t-1} | x_t) = E_z[q(x_{t-1} | x_t, x0 = G(x_t, z, t))] (Xiao et al.
2022, eq. 9 and §3.3). It equals the true q(x_{t-1} | x_t) exactly when G(x_t, z, t), z ~ N(0, I), is
distributed as q(x0 | x_t): the posterior q(x_{t-1} | x_t, x0) is a Gaussian whose mean is affine in x0,
so the mixture over x0 determines it and back. On a Gaussian mixture q(x0 | x_t) is known in closed
form (`gaussian_mixture.mixture_posterior_sample`), so each step can be checked on its own:

1. x_t ~ q(x_t) at schedule index t (training points noised with DDPM eq. 4);
2. `n_z` draws of x0-hat per x_t from the generator under test;
3. each draw's mode: its nearest mixture mean when within `n_std` component stds, else "off-mode".

Per t it reports:
- `tv`: the mean over x_t of the total variation between the draws' mode histogram (off-mode counted
  against it) and the exact p(k | x_t); sampling noise alone leaves about sqrt(modes / n_z) / 2;
- `reached`: the share of the posterior's modes (components with p(k | x_t) >= `min_prob`, by default
  half the uniform weight 1 / (2K)) that at least one draw hits, averaged over x_t; an exact sampler
  misses one with chance below (1 - min_prob)^n_z (3e-4 at the defaults on 25 modes);
- `posterior_modes`: how many such modes q(x0 | x_t) has on average: how multimodal the step is;
- `hq`: the draws' share within `n_std` component stds of a mean (the protocol's quality).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from components.math.diffusion import q_sample
from components.data.gaussian_mixture import mixture_posterior_probs
from components.math.schedules import Schedule

X0Sampler = Callable[[torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]  # (x_t, t, generator) -> x0-hat


def generator_sampler(G: torch.nn.Module) -> X0Sampler:
    """DDGAN's G(x_t, t, z) with fresh z ~ N(0, I_nz) per draw, as an X0Sampler."""

    def draw(x_t: torch.Tensor, t: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return G(x_t, t, torch.randn((len(x_t), G.nz), generator=generator, device=x_t.device))

    return draw


@torch.no_grad()
def posterior_match(draw: X0Sampler, sched: Schedule, means: np.ndarray, std: float, x0: torch.Tensor, *,
                    generator: torch.Generator, n_xt: int = 200, n_z: int = 400, min_prob: float | None = None,
                    n_std: float = 3.0) -> list[dict[str, float]]:
    """One dict per t = 0..T-1 (fields in the module docstring): `draw`'s x0-hat against the exact q(x0 | x_t).

    means (K, D) and std are the mixture's in the space `draw` works in (model space); x0 (N, D) are
    points of the data, of which n_xt are noised at each t.
    """
    m = torch.as_tensor(means, dtype=torch.float64, device=x0.device)
    K = len(m)
    min_prob = 0.5 / K if min_prob is None else min_prob
    out = []
    for step in range(len(sched)):
        x = x0[torch.randint(len(x0), (n_xt,), generator=generator, device=x0.device)]
        t = torch.full((n_xt,), step, dtype=torch.long, device=x0.device)
        x_t = q_sample(sched, x, t, torch.randn(x.shape, generator=generator, device=x.device))
        probs = mixture_posterior_probs(sched, means, std, x_t, t)  # (n_xt, K)
        rep_xt, rep_t = x_t.repeat_interleave(n_z, 0), t.repeat_interleave(n_z, 0)
        x0_hat = draw(rep_xt, rep_t, generator).reshape(n_xt * n_z, -1).double()
        dist = torch.cdist(x0_hat, m)  # (n_xt n_z, K)
        near, d = dist.argmin(1), dist.min(1).values
        hq = d <= n_std * std
        mode = torch.where(hq, near, torch.full_like(near, K)).reshape(n_xt, n_z)  # K: off-mode
        hist = torch.zeros(n_xt, K + 1, dtype=torch.float64, device=mode.device).scatter_add_(
            1, mode, torch.ones(mode.shape, dtype=torch.float64, device=mode.device)) / n_z
        tv = 0.5 * ((hist[:, :K] - probs).abs().sum(1) + hist[:, K])
        wanted = probs >= min_prob
        reached = ((hist[:, :K] > 0) & wanted).sum(1) / wanted.sum(1)
        out.append({"t": step, "abar": float(sched.alphas_cumprod[step]),
                    "posterior_modes": float(wanted.sum(1).double().mean()), "reached": float(reached.mean()),
                    "tv": float(tv.mean()), "hq": float(hq.double().mean())})
    return out


def format_rows(rows: list[dict[str, float]]) -> str:
    """The per-t table as aligned text lines."""
    head = f"{'t':>2} {'abar_t':>7} {'modes':>6} {'reached':>8} {'TV':>6} {'hq':>6}"
    lines = [f"{r['t']:>2} {r['abar']:>7.4f} {r['posterior_modes']:>6.1f} {r['reached']:>8.3f} {r['tv']:>6.3f} "
             f"{r['hq']:>6.3f}" for r in rows]
    return "\n".join([head, *lines])
