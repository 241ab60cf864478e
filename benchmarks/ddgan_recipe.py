"""Train one DDGAN in-process with a recipe override and print its samples' metrics: the runs behind
docs/results.md's DDGAN tuning figures. Reads data/{train,reference}.npz (run `dvc repro prepare` first); writes nothing.

    .venv/bin/python benchmarks/ddgan_recipe.py --T 4 [--steps 2000] [--d-octaves 6] [--r1-gamma 0.02] ...

Defaults are params.yaml's train_ddgan recipe, except where an option overrides it; with none, the EMA
generator is train_ddgan@<T>'s. Metrics are the table's (the sample stages'), for the EMA generator and the raw
one, on sample.n samples drawn as sample_ddgan@<T> draws them (sample.seed, one batch): with no option,
the EMA line is the table's row ddgan-<T>.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components.data import to_data  # noqa: E402
from components.ddgan import GANState, ddgan_train_step  # noqa: E402
from components.metrics import reference_set, sample_metrics  # noqa: E402
from components.networks import make_discriminator, make_generator  # noqa: E402
from components.samplers import sample_ddgan  # noqa: E402
from components.schedules import make_schedule, make_trajectory, respace  # noqa: E402
from components.training import lr_at  # noqa: E402
from pipelines.io import load_dataset, pin_malloc_thresholds  # noqa: E402
from pipelines.params import load_params  # noqa: E402


def main() -> None:
    params = load_params()
    p = params.train_ddgan
    g_kw, d_kw = dict(p.generator.kwargs), dict(p.discriminator.kwargs)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", type=int, default=4)
    ap.add_argument("--steps", type=int, default=p.steps)
    ap.add_argument("--batch-size", type=int, default=p.batch_size)
    ap.add_argument("--lr-g", type=float, default=p.lr)
    ap.add_argument("--lr-d", type=float, default=p.lr_d)
    ap.add_argument("--r1-gamma", type=float, default=p.r1_gamma)
    ap.add_argument("--ema-decay", type=float, default=p.ema_decay)
    ap.add_argument("--g-width", type=int, default=g_kw["width"])
    ap.add_argument("--g-depth", type=int, default=g_kw["depth"])
    ap.add_argument("--g-octaves", type=int, default=g_kw["fourier_octaves"])
    ap.add_argument("--nz", type=int, default=g_kw["nz"])
    ap.add_argument("--mapping-depth", type=int, default=g_kw["mapping_depth"])
    ap.add_argument("--d-width", type=int, default=d_kw["width"])
    ap.add_argument("--d-depth", type=int, default=d_kw["depth"])
    ap.add_argument("--d-octaves", type=int, default=d_kw["fourier_octaves"])
    a = ap.parse_args()
    pin_malloc_thresholds()

    train, ref = (load_dataset(f"data/{split}.npz", params.data.name) for split in ("train", "reference"))
    data = torch.from_numpy(train.to_model(train.x))
    sched = make_schedule(p.schedule, a.T)
    torch.manual_seed(p.seed)
    G = make_generator(p.generator.name, (2,), **{**g_kw, "width": a.g_width, "depth": a.g_depth, "nz": a.nz,
                                                   "mapping_depth": a.mapping_depth, "fourier_octaves": a.g_octaves})
    D = make_discriminator(p.discriminator.name, (2,), **{**d_kw, "width": a.d_width, "depth": a.d_depth,
                                                           "fourier_octaves": a.d_octaves})
    state = GANState.create(G, D, lr_g=a.lr_g, lr_d=a.lr_d, betas=tuple(p.adam_betas), seed=p.seed)
    t0 = time.perf_counter()
    for step in range(a.steps):
        lr_g, lr_d = (lr_at(step, lr=lr, warmup_steps=p.warmup_steps, total_steps=a.steps, schedule=p.lr_schedule)
                      for lr in (a.lr_g, a.lr_d))  # as the stage computes them, so the default run is the stage's
        m = ddgan_train_step(state, sched, data, batch_size=a.batch_size, lr_g=lr_g, lr_d=lr_d, r1_gamma=a.r1_gamma,
                             r1_every=p.r1_every, ema_decay=a.ema_decay, grad_clip=p.grad_clip)
    train_s = time.perf_counter() - t0

    reference = reference_set(ref.x, "identity", 3)
    print(f"T {a.T}, {a.steps} steps in {train_s:.1f} s ({a.steps / train_s:.1f} it/s); last D loss {m['d_loss']:.3f}, "
          f"G loss {m['g_loss']:.3f}, D loss at t = 0 {m['d_loss_t0']:.3f}")
    cell_sched = respace(sched, make_trajectory("uniform", a.T, a.T))  # as sample_ddgan@<T> runs it (run_cell)
    for name, net in (("ema", state.ema), ("raw", G)):
        generator = torch.Generator().manual_seed(params.sample.seed)
        x_T = torch.randn((params.sample.n, 2), generator=generator)
        x = sample_ddgan(net.eval(), cell_sched, x_T, generator=generator)
        metrics = sample_metrics(to_data(x.numpy(), ref.shift, ref.scale), reference, modes=ref.modes,
                                 mode_std=ref.mode_std)
        print(f"  {name} G: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()
                                           if k in ("hq_fraction", "modes", "precision", "recall", "fid")))


if __name__ == "__main__":
    main()
