"""Does the table's speed axis survive a busy machine? Two identical cells timed under injected background load.

    python benchmarks/timing_under_load.py [--load-procs 2] [--steps 50] [--rounds 3]

The cell is `exact-ddim-50` of the default params (DDIM, 50 steps, the mixture's exact eps*:
sample_exact's code path, no checkpoint needed). Background load is `--load-procs` processes that
busy-loop for random bursts of 0.05-0.5 s with pauses of the same length, started before the first
timing and stopped after the last. Three ways of timing the same cell twice, back to back:

- `single`: what the table did before, one timed run of all params sample.n samples in torch's
  default threads (one figure, no spread);
- `repeats, torch threads`: params timing (median and IQR of repeats) in torch's default threads;
- `repeats, 1 thread`: params timing as the pipeline runs it (timing.threads = 1).

For each, it prints both cells' figures, their ratio, and whether they agree within their
reported spread: the intervals median ± IQR/2, which the table prints, overlap.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import random
import time

import torch

from components.data.datasets import DATASETS
from components.math.diffusion import ReverseModel
from components.data.gaussian_mixture import mixture_eps_model
from components.sampling.registry import SAMPLERS
from components.math.schedules import make_schedule, make_trajectory, respace
from pipelines.params import load_params
from pipelines.stages.sample import draw
from pipelines.stages.timing import time_draws


def busy(stop: mp.Event, seed: int) -> None:
    """Intermittent load: random bursts of pure-Python work, random pauses."""
    rng = random.Random(seed)
    while not stop.is_set():
        end = time.perf_counter() + rng.uniform(0.05, 0.5)
        while time.perf_counter() < end:
            sum(i * i for i in range(1000))
        time.sleep(rng.uniform(0.05, 0.5))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--load-procs", type=int, default=2, help="background processes (default: one per core here)")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3, help="pairs of identical cells per method")
    args = ap.parse_args()
    params = load_params()
    spec = DATASETS[params.data.name]
    ds = spec.build(2000, 10, params.data.seed, **params.data.options())["reference"]
    full = make_schedule(params.diffusion.schedule, params.diffusion.T)
    model = ReverseModel(mixture_eps_model(full, ds.to_model(ds.modes), ds.mode_std * ds.scale))
    sched = respace(full, make_trajectory("uniform", len(full), args.steps))
    shape, kwargs, sampler = tuple(ds.x.shape[1:]), {"eta": 0.0}, SAMPLERS["ddim"]
    n, t = params.sample.n, params.timing

    def cell(n_: int, seed: int) -> torch.Tensor:
        return draw(sampler, model, sched, n_, n_, shape, torch.Generator().manual_seed(seed), kwargs, False)

    def single() -> dict:
        cell(t.n, 1)  # warm-up, as the old stage did
        t0 = time.perf_counter()
        cell(n, 0)
        return {"wall_s_per_1k": (time.perf_counter() - t0) / n * 1000, "wall_s_per_1k_iqr": 0.0}

    methods = {
        "single (before)": single,
        "repeats, torch threads": lambda: time_draws(cell, n=t.n, repeats=t.repeats, warmup=t.warmup, threads=0),
        f"repeats, {t.threads} thread (pipeline)": lambda: time_draws(cell, n=t.n, repeats=t.repeats,
                                                                     warmup=t.warmup, threads=t.threads),
    }
    stop = mp.Event()
    load = [mp.Process(target=busy, args=(stop, i), daemon=True) for i in range(args.load_procs)]
    for p in load:
        p.start()
    try:
        print(f"exact-ddim-{args.steps}, {args.load_procs} background processes, timing {t.repeats} x {t.n} samples")
        print(f"{'method':34s} {'cell A s/1k':>18s} {'cell B s/1k':>18s} {'B/A':>6s}  agree")
        for name, measure in methods.items():
            for _ in range(args.rounds):
                a, b = measure(), measure()
                ma, mb, ia, ib = a["wall_s_per_1k"], b["wall_s_per_1k"], a["wall_s_per_1k_iqr"], b["wall_s_per_1k_iqr"]
                agree = abs(ma - mb) <= (ia + ib) / 2
                print(f"{name:34s} {ma:9.4f} ± {ia / 2:6.4f} {mb:9.4f} ± {ib / 2:6.4f} {mb / ma:6.2f}  {agree}")
    finally:
        stop.set()
        for p in load:
            p.join()


if __name__ == "__main__":
    main()
