"""DDGAN on the 25-Gaussians toy: train in-process over seeds and recipe variants, print the table's DDGAN metrics,
the per-step posterior diagnostic and an ablation table. The runs behind docs/results.md's DDGAN section.

    .venv/bin/python benchmarks/ddgan_recipe.py [--T 1 2 4] [--seeds 0 1 2] [--variants default paper-schedule ...]
        [--set KEY=VALUE ...] [--diagnose] [--workers 2]

Reads params.yaml and data/{train,reference}.npz (run `dvc repro prepare` first); writes nothing. A variant is
params.yaml's train_ddgan with a few entries changed (VARIANTS below, each one of the recipe's departures from
DDGAN's paper or from this project's previous recipe, reverted), then any --set edits. `default` is params.yaml
itself: at the default seed its lines are the table's ddgan-<T> rows (they were, to the last digit, in the run
docs/results.md quotes, although the stages run on two threads and these workers on one). Metrics are the table's,
for the EMA generator, on sample.n samples drawn as sample_ddgan@<T> draws them. --diagnose adds
`components.sampling.posterior_match`'s per-t table: whether G's x0-hat follows the exact posterior q(x0 | x_t) at each
denoising step.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components.data.dataset import to_data  # noqa: E402
from components.scoring.metrics import reference_set, sample_metrics  # noqa: E402
from components.sampling.posterior_match import format_rows, generator_sampler, posterior_match  # noqa: E402
from components.sampling.samplers import GANGenerator, sample_ddgan  # noqa: E402
from components.math.schedules import make_schedule, make_trajectory, respace  # noqa: E402
from pipelines.plumbing.loading import load_dataset  # noqa: E402
from pipelines.plumbing.malloc import pin_malloc_thresholds  # noqa: E402
from pipelines.params import parse_params  # noqa: E402
from pipelines.params.loader import PARAMS_FILE  # noqa: E402
from pipelines.params.reader import read_yaml  # noqa: E402
from pipelines.stages.train_ddgan import new_state, recipe_step  # noqa: E402

# name -> edits of params.yaml's train_ddgan section (key path -> value): each reverts one choice of the recipe.
PREVIOUS_NETWORKS = {
    ("generator",): {"name": "mlp", "nz": 16, "width": 128, "depth": 3, "temb_dim": 64, "zemb_dim": 64,
                     "mapping_depth": 2, "fourier_octaves": 0},
    ("discriminator",): {"name": "mlp", "width": 128, "depth": 2, "temb_dim": 64, "fourier_octaves": 6},
}
VARIANTS: dict[str, dict[tuple, object]] = {
    "default": {},
    "paper-schedule": {("schedule",): "ddgan_vp"},  # DDGAN's VP: abar_0 = 0.52 at T = 4
    "g-no-fourier": {("generator", "fourier_octaves"): 0},
    "steps-2000": {("steps",): 2000},
    "previous-networks": PREVIOUS_NETWORKS,  # residual AdaLN nets, z through a mapping network
    "previous": {**PREVIOUS_NETWORKS, ("schedule",): "ddgan_vp", ("steps",): 2000},  # the recipe before this one
}
METRICS = ("modes", "hq_fraction", "precision", "recall")


def variant_params(name: str, extra: tuple[tuple[tuple, object], ...] = ()):
    """params.yaml with variant `name`'s edits to train_ddgan, then `extra` edits, validated as the stages do."""
    doc = read_yaml(PARAMS_FILE)
    for path, value in (*VARIANTS[name].items(), *extra):
        node = doc["train_ddgan"]
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return parse_params(doc)


def parse_set(text: str) -> tuple[tuple, object]:
    """`--set generator.nz=4` -> (("generator", "nz"), 4): a train_ddgan entry and its value, read as YAML."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--set {text!r}: expected key.path=value")
    return tuple(key.split(".")), yaml.safe_load(value)


def run(job: tuple) -> dict:
    """Train one DDGAN (variant, T, seed, --set edits) as train_ddgan@<T> trains it; return its metrics."""
    name, T, seed, extra, diagnose = job
    torch.set_num_threads(1)
    params = variant_params(name, extra)
    p = params.train_ddgan
    train, ref = (load_dataset(f"data/{split}.npz", params.data.name) for split in ("train", "reference"))
    data = torch.from_numpy(train.to_model(train.x))
    sched = make_schedule(p.schedule, T)
    state = new_state(p, tuple(data.shape[1:]), seed)
    t0 = time.perf_counter()
    while state.step < p.steps:
        recipe_step(state, sched, data, p)  # as the stage trains
    train_s = time.perf_counter() - t0
    G = state.ema.eval()
    generator = torch.Generator().manual_seed(params.sample.seed)
    x_T = torch.randn((params.sample.n, *data.shape[1:]), generator=generator)
    with torch.no_grad():
        x = sample_ddgan(GANGenerator(G, G.nz), respace(sched, make_trajectory("uniform", T, T)), x_T, generator=generator)
    metrics = sample_metrics(to_data(x.numpy(), ref.shift, ref.scale), reference_set(ref.x, "identity", 3),
                             modes=ref.modes, mode_std=ref.mode_std)
    label = " ".join([name, *(f"{'.'.join(k)}={v}" for k, v in extra)])
    out = {"variant": label, "T": T, "seed": seed, "steps": p.steps, "train_s": train_s,
           **{k: metrics[k] for k in METRICS}}
    if diagnose:
        out["per_t"] = posterior_match(generator_sampler(G), sched, train.to_model(train.modes),
                                       train.mode_std * train.scale, data, generator=torch.Generator().manual_seed(1))
    return out


def summary(results: list[dict]) -> str:
    """A markdown table: one line per (variant, T), the median over seeds and each seed's modes / hq."""
    lines = ["| variant | T | seeds | modes (median) | hq (median) | precision | recall | per seed: modes / hq "
             "| train s |", "|---|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["variant"], r["T"]), []).append(r)
    for (name, T), rs in groups.items():
        med = {k: statistics.median(r[k] for r in rs) for k in (*METRICS, "train_s")}
        seeds = ", ".join(f"{r['seed']}: {r['modes']} / {r['hq_fraction']:.3f}" for r in rs)
        lines.append(f"| {name} | {T} | {len(rs)} | {med['modes']:g} | {med['hq_fraction']:.3f} | "
                     f"{med['precision']:.3f} | {med['recall']:.3f} | {seeds} | {med['train_s']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", type=int, nargs="+", default=[4])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=["default"], choices=list(VARIANTS))
    ap.add_argument("--set", type=parse_set, action="append", default=[], metavar="KEY=VALUE",
                    help="also change a train_ddgan entry, e.g. --set steps=12000 --set generator.nz=4")
    ap.add_argument("--diagnose", action="store_true", help="print the per-t posterior diagnostic of every run")
    ap.add_argument("--workers", type=int, default=2, help="runs in parallel, one torch thread each")
    a = ap.parse_args()
    pin_malloc_thresholds()
    jobs = [(v, T, s, tuple(a.set), a.diagnose) for v in a.variants for T in a.T for s in a.seeds]
    t0 = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(a.workers) as pool:
        results = []
        for r in pool.imap(run, jobs):
            results.append(r)
            print(f"{r['variant']} T={r['T']} seed {r['seed']}: {r['steps']} steps in {r['train_s']:.1f} s; "
                  + ", ".join(f"{k} {r[k]:.3f}" for k in METRICS), flush=True)
            if a.diagnose:
                print(format_rows(r["per_t"]), flush=True)
    print(f"\n{len(jobs)} runs in {time.perf_counter() - t0:.0f} s\n")
    print(summary(results))


if __name__ == "__main__":
    main()
