"""The eps-model samplers a sweep cell chooses from, by name (the one pattern: components/registry.py): DDPM's
ancestral sampler (Ho et al. Alg. 2) and DDIM (Song et al. eq. 12)."""

from __future__ import annotations

from components.registry import Registry

SAMPLERS = Registry("sampler", {"ddpm": "components.sampling.samplers:sample_ddpm",
                                "ddim": "components.sampling.samplers:sample_ddim"})
