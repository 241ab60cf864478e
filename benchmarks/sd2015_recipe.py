"""Sohl-Dickstein et al. 2015's model on the 25-Gaussians: train in-process over recipe variants and print each
one's bound, the number behind the table's sd2015-1000 row and docs/results.md's budget table.

    .venv/bin/python benchmarks/sd2015_recipe.py [--variants default uniform-t no-clip ...] [--workers 2]

Reads params.yaml and data/{train,reference}.npz (run `dvc repro prepare` first); writes nothing. A variant is
params.yaml's train_sd2015 with a few entries changed (VARIANTS below: each reverts one choice of the recipe or
changes its budget). The bound is the stage's: the EMA weights, the full chain, the first nll.n reference
points, one x_t draw per term from nll.seed, in nats per dimension in data units, with one standard error.
`default` is the stage's recipe, but in one torch thread where the stage runs two, and training amplifies the float
differences: 0.2037 here against the table's 0.2024. Each run prints its training time in one thread.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components.data.datasets import DATASETS  # noqa: E402
from components.math.diffusion import ReverseModel  # noqa: E402
from components.math.likelihood import bound_per_dim, variational_bound  # noqa: E402
from components.math.schedules import make_schedule  # noqa: E402
from components.training.steps import bound_train_step, lr_at  # noqa: E402
from pipelines.plumbing.loading import load_dataset  # noqa: E402
from pipelines.plumbing.malloc import pin_malloc_thresholds  # noqa: E402
from pipelines.params import parse_params  # noqa: E402
from pipelines.params.loader import PARAMS_FILE  # noqa: E402
from pipelines.params.reader import read_yaml  # noqa: E402
from pipelines.stages.train_sd2015 import OUTPUT, new_state  # noqa: E402

# name -> edits of params.yaml's train_sd2015 section
VARIANTS: dict[str, dict[str, object]] = {
    "default": {},
    "uniform-t": {"timestep_sampler": "uniform"},  # the paper's per-example t
    "no-clip": {"grad_clip": 0.0},
    "steps-6000": {"steps": 6000},
    "lr-0.003": {"lr": 0.003},
    "batch-512": {"batch_size": 512},
}


def run(name: str) -> dict:
    torch.set_num_threads(1)
    doc = read_yaml(PARAMS_FILE)
    doc["train_sd2015"].update(VARIANTS[name])
    params = parse_params(doc)
    p, diff, nll = params.train_sd2015, params.diffusion, params.nll
    train, ref = (load_dataset(f"data/{s}.npz", params.data.name) for s in ("train", "reference"))
    data = torch.from_numpy(train.to_model(train.x))
    sched = make_schedule(diff.schedule, diff.T)
    state, timesteps = new_state(p, tuple(data.shape[1:]), len(sched))
    decoder = DATASETS[params.data.name].decoder
    t0 = time.perf_counter()
    while state.step < p.steps:
        lr = lr_at(state.step, lr=p.lr, warmup_steps=p.warmup_steps, total_steps=p.steps, schedule=p.lr_schedule)
        bound_train_step(state, sched, data, timesteps, batch_size=p.batch_size, output=OUTPUT, decoder=decoder,
                         lr=lr, grad_clip=p.grad_clip, ema_decay=p.ema_decay)
    train_s = time.perf_counter() - t0
    x0 = torch.from_numpy(ref.to_model(ref.x[: nll.n]))
    out = variational_bound(ReverseModel(state.ema.eval(), OUTPUT), sched, x0, variance="learned", decoder=decoder,
                            generator=torch.Generator().manual_seed(nll.seed))
    per_dim = bound_per_dim(out["total"], x0[0].numel(), decoder, ref.scale)
    return {"variant": name, "nll": float(per_dim.mean()), "se": float(per_dim.std()) / math.sqrt(len(per_dim)),
            "train_s": train_s, "steps": p.steps, "batch": p.batch_size}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--workers", type=int, default=2, help="runs in parallel, one torch thread each")
    args = ap.parse_args()
    pin_malloc_thresholds()
    with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
        results = []
        for r in pool.imap(run, args.variants):
            print(f"{r['variant']}: bound {r['nll']:.4f} ± {r['se']:.4f} nats/dim ({r['steps']} steps at batch "
                  f"{r['batch']}, {r['train_s']:.0f} s in one thread)", flush=True)
            results.append(r)
    print("\n| variant | bound (nats/dim) | training (one thread) |\n|---|---|---|")
    for r in results:
        print(f"| {r['variant']} | {r['nll']:.4f} ± {r['se']:.4f} | {r['train_s']:.0f} s |")


if __name__ == "__main__":
    main()
