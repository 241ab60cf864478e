"""Benchmark: what the samplers cost outside the network, per step, against one forward pass.

    .venv/bin/python benchmarks/sampler_overhead.py [--steps 1000] [--repeats 5]

A zero-cost model (returns zeros) isolates the loop's own work (schedule lookups, posterior
math, noise); the MLP from params.yaml gives the forward pass to compare with. The machine is
noisy, so compare the ratios printed in one run, and take the median of repeats.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from components.networks.mlp import make_network
from components.math.diffusion import ReverseModel
from components.sampling.samplers import sample_ddim, sample_ddpm
from components.math.schedules import make_schedule, make_trajectory, respace
from pipelines.plumbing.malloc import pin_malloc_thresholds
from pipelines.params import load_params


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    pin_malloc_thresholds()  # as every stage does (pipelines/plumbing/entry.py)
    p = load_params()
    net = make_network(p.train_ddpm.network.name, (2,), **p.train_ddpm.network.kwargs).eval().requires_grad_(False)
    sched = respace(make_schedule(p.diffusion.schedule, p.diffusion.T),
                    make_trajectory("uniform", p.diffusion.T, args.steps))

    def zero_model(x, t):
        return torch.zeros_like(x)

    print(f"{'batch':>6} {'loop':>5} {'overhead us/step':>17} {'forward us':>11} {'overhead/forward':>17}")
    for batch in (1, 10_000):
        x_T = torch.randn(batch, 2)
        t = torch.zeros(batch, dtype=torch.long)
        with torch.no_grad():
            fwd = median_seconds(lambda: [net(x_T, t) for _ in range(20)], args.repeats) / 20
        for name, sampler in (("ddpm", sample_ddpm), ("ddim", sample_ddim)):
            g = torch.Generator().manual_seed(0)
            loop = median_seconds(lambda: sampler(ReverseModel(zero_model), sched, x_T, generator=g), args.repeats) / len(sched)
            print(f"{batch:>6} {name:>5} {loop * 1e6:>17.1f} {fwd * 1e6:>11.1f} {loop / fwd:>17.3f}")


if __name__ == "__main__":
    main()
