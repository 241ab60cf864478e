"""Benchmark: what classifier guidance adds to a sampler step, guided against unguided, in one run.

    .venv/bin/python benchmarks/guidance_cost.py [--steps 50] [--batch 10000] [--rounds 5]

The networks are params.yaml's (train_ddpm.network for eps_theta, train_classifier.network for
p_phi), freshly initialised: the cost does not depend on the weights. Each round times the
unguided and the guided sampler back to back (ADM Alg. 1 for ddpm, Alg. 2 for ddim; one
classifier forward and backward per step), so the machine's drift hits both alike; the
medians over rounds and their ratio are printed. Compare ratios within one run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from components.math.diffusion import ReverseModel
from components.sampling.guidance import classifier_grad
from components.networks.mlp import make_classifier, make_network
from components.sampling.samplers import sample_ddim, sample_ddpm
from components.math.schedules import make_schedule, make_trajectory, respace
from pipelines.plumbing.malloc import pin_malloc_thresholds
from pipelines.params import load_params


def seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    pin_malloc_thresholds()  # as every stage does (pipelines/plumbing/entry.py)
    p = load_params()
    torch.manual_seed(0)
    net = ReverseModel(make_network(p.train_ddpm.network.name, (2,), **p.train_ddpm.network.kwargs).eval()
                       .requires_grad_(False))
    clf = make_classifier(p.train_classifier.network.name, (2,), 25,
                          **p.train_classifier.network.kwargs).eval().requires_grad_(False)
    sched = respace(make_schedule(p.diffusion.schedule, p.diffusion.T),
                    make_trajectory("uniform", p.diffusion.T, args.steps))
    x_T = torch.randn(args.batch, 2)
    guidance = classifier_grad(clf, torch.randint(25, (args.batch,)), 1.0)

    print(f"batch {args.batch}, {args.steps} steps, {args.rounds} rounds; medians in ms per step")
    print(f"{'sampler':>8} {'unguided':>9} {'guided':>9} {'guided/unguided':>16}")
    for name, sampler in (("ddpm", sample_ddpm), ("ddim", sample_ddim)):
        runs = {"unguided": [], "guided": []}
        for r in range(args.rounds + 1):  # round 0 warms up
            for kind, extra in (("unguided", {}), ("guided", {"guidance": guidance})):
                g = torch.Generator().manual_seed(0)
                t = seconds(lambda: sampler(net, sched, x_T, generator=g, **extra)) / len(sched)
                if r:
                    runs[kind].append(t)
        plain, guided = statistics.median(runs["unguided"]), statistics.median(runs["guided"])
        print(f"{name:>8} {plain * 1e3:>9.2f} {guided * 1e3:>9.2f} {guided / plain:>16.3f}")


if __name__ == "__main__":
    main()
