"""Benchmark: images per second of three sampling chains on DDPM's CIFAR-10 UNet, at batch 256.

    .venv/bin/python benchmarks/sampling_throughput.py [--device auto] [--batch 256] [--precision fp32 bf16]
        [--min-seconds 2] [--small] [--threads 0]

The network is the cifar10 profile's UNet (profiles/cifar10.yaml, train_ddpm.network: DDPM's 35.7M-parameter
CIFAR-10 UNet, Ho et al. 2020, appendix B) with random weights: throughput does not depend on them. One row per
chain and precision (`components/networks/runtime.py`: eager, NCHW; benchmarks/unet_throughput.py covers channels_last and
torch.compile):

- ddpm-1000: DDPM's ancestral sampler (Ho et al. 2020, Algorithm 2; `samplers.sample_ddpm`), all 1000 steps of
  the linear schedule: 1000 network evaluations an image.
- ddim-50: DDIM with eta 0 (Song et al. 2021, eq. 12; `samplers.sample_ddim`) on a 50-step uniform respacing of
  the same schedule (`schedules.respace`): 50 evaluations an image.
- ddgan-4: DDGAN's sampler (Xiao et al. 2022, §3.3; `samplers.sample_ddgan`) on DDGAN's own 4-step schedule
  (`ddgan_vp`). The UNet itself stands in for G: G(x_t, t, z) = UNet(x_t, t), read as x0-hat, with z drawn each
  step and unused, so the three rows time one network. The row is 4 evaluations an image of a generator the size of
  DDPM's CIFAR-10 UNet (DDGAN's NCSN++ generator is of that order) plus DDGAN's posterior draws; the registry's image
  generator (`unet`, components/networks/generator.py: the same UNet with z in adaptive GroupNorm) adds a small
  mapping network and a per-block scale and shift to this cost.

images/s = batch x chains / seconds: whole chains are timed back to back until at least `min_seconds` have passed
(one chain at least), after one untimed short chain per precision (cuDNN's kernel choice, allocations). Timed
regions begin and end with a device synchronise. --small is a size for a CPU: batch 4, 16x16, ch 16, attention
at 8, fp32 only (bf16 autocast took 10 minutes on the 2-core machine), one thread (two threads on that machine, busy
with other work, ran 20 times slower); 27 s there, and its figures only show that the script runs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components.networks.mlp import make_network  # noqa: E402
from benchmarks.unet_throughput import parse_sized  # noqa: E402
from components.networks.runtime import Forward, Runtime, describe, forward_fn, generator, synchronize  # noqa: E402
from components.math.diffusion import ReverseModel  # noqa: E402
from components.sampling.samplers import GANGenerator, sample_ddgan, sample_ddim, sample_ddpm  # noqa: E402
from components.math.schedules import Schedule, make_schedule, make_trajectory, respace  # noqa: E402
from pipelines.orchestration.profile import load_profile, profile_params  # noqa: E402

SMALL = {"batch": 4, "size": 16, "ch": 16, "precision": ["fp32"], "threads": 1}
DDGAN_NZ = 100  # DDGAN's latent size on CIFAR-10 (its z is drawn, not read, by the stand-in generator)


def unet_as_generator(forward: Forward, nz: int = DDGAN_NZ) -> GANGenerator:
    """A DDGAN generator G(x_t, t, z) -> x0-hat made of an eps-network's forward: z is ignored (a cost stand-in)."""
    return GANGenerator(lambda x_t, t, z: forward(x_t, t), nz)  # (B, C, H, W), read as x0-hat


def cifar10_unet(size: int, ch: int | None) -> torch.nn.Module:
    """The cifar10 profile's train_ddpm UNet for (3, size, size) images; `ch` (and attention at size/2) to shrink it."""
    net = dict(profile_params(load_profile("cifar10"))["train_ddpm"]["network"])
    name = net.pop("name")
    if ch is not None:
        net.update(ch=ch, attn_resolutions=[size // 2])
    return make_network(name, (3, size, size), **net)


def chains(forward: Forward) -> dict[str, Callable[[torch.Tensor, torch.Generator], torch.Tensor]]:
    """Row name -> a function drawing one chain from x_T (B, C, H, W): DDPM-1000, DDIM-50, DDGAN-4."""
    linear = make_schedule("linear", 1000)
    ddim = respace(linear, make_trajectory("uniform", len(linear), 50))
    ddgan: Schedule = make_schedule("ddgan_vp", 4)
    G, model = unet_as_generator(forward), ReverseModel(forward)
    return {
        "ddpm-1000": lambda x, g: sample_ddpm(model, linear, x, generator=g, variance="small", clip_x0=True),
        "ddim-50": lambda x, g: sample_ddim(model, ddim, x, generator=g, eta=0.0, clip_x0=True),
        "ddgan-4": lambda x, g: sample_ddgan(G, ddgan, x, generator=g),
    }


def time_chains(draw: Callable, x_T: torch.Tensor, g: torch.Generator, min_seconds: float) -> tuple[int, float]:
    """(chains, wall seconds): whole chains from x_T drawn back to back until min_seconds have passed (one at least)."""
    synchronize(x_T.device)
    t0, n = time.perf_counter(), 0
    while True:
        draw(x_T, g)
        n += 1
        synchronize(x_T.device)
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds:
            return n, elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--ch", type=int, default=None, help="UNet width (default: the cifar10 profile's)")
    ap.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    ap.add_argument("--min-seconds", type=float, default=2.0, help="time whole chains for at least this long a row")
    args, device = parse_sized(ap, SMALL)

    torch.manual_seed(0)
    net = cifar10_unet(args.size, args.ch).to(device).eval()
    params = sum(p.numel() for p in net.parameters())
    print(f"device: {describe(Runtime(device))}; torch {torch.__version__}")
    print(f"the cifar10 profile's UNet ({params / 1e6:.1f}M parameters), random weights; batch {args.batch}, "
          f"{args.size}x{args.size}; eager, NCHW; ddgan-4: the UNet as DDGAN's generator (see the docstring)\n")
    print("| chain | network evals / image | precision | images/s | chains timed |")
    print("|---|---:|---|---:|---:|")
    for precision in args.precision:
        rt = Runtime(device, precision)
        forward = forward_fn(net, rt)
        g = generator(rt, 0)
        x_T = torch.randn((args.batch, 3, args.size, args.size), generator=g, device=device)  # (B, C, H, W)
        short = respace(make_schedule("linear", 1000), make_trajectory("uniform", 1000, 2))
        sample_ddpm(ReverseModel(forward), short, x_T, generator=g)  # untimed: kernel choice and allocations
        for name, draw in chains(forward).items():
            n, seconds = time_chains(draw, x_T, g, args.min_seconds)
            evals = name.rsplit("-", 1)[1]  # one network evaluation a step
            print(f"| {name} | {evals} | {precision} | {args.batch * n / seconds:,.2f} | {n} |", flush=True)


if __name__ == "__main__":
    main()
