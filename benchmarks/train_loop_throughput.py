"""Benchmark: the trainer's loop (`pipelines.stages.trainer.train_loop` over `components.training.steps.train_step`), images/s.

    .venv/bin/python benchmarks/train_loop_throughput.py [--net mnist | toy] [--device cpu] [--steps 60]
        [--warmup 10] [--batch 64] [--threads 0] [--repeats 3]

--net mnist (the default): the mnist profile's DDPM UNet (ch 16, ch_mult (1, 2, 2), one residual block a
level, attention at 7x7, dropout 0.1) on 4,000 stand-in 28x28 digits, batch 64. --net toy: params.yaml's
train_ddpm MLP (width 128, depth 4) on 4,000 stand-in 2-D points, batch 1024 (pass --batch 1024). Throughput
does not depend on the data's values. What is timed is everything a `train_ddpm` step costs in the stage: the minibatch draw, L_simple
(DDPM eq. 14), backward, clip, Adam, the EMA and the loop's logging and divergence checks (log_every 50,
the last step's weight check; no checkpoint is written). Each repeat trains a fresh state for `warmup` untimed steps and
`steps` timed ones; the line printed is the median over repeats, so this script compares two versions
of the loop run back to back (`farm-bench --vs`).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components.networks.mlp import make_network  # noqa: E402
from components.networks.runtime import resolve_device, synchronize  # noqa: E402
from components.math.schedules import make_schedule  # noqa: E402
from components.training.state import TrainState  # noqa: E402
from components.training.steps import train_step  # noqa: E402
from pipelines.params.training import OptimParams  # noqa: E402
from pipelines.stages.trainer import train_loop  # noqa: E402

LOG_EVERY = 50  # the mnist profile's
NETS = {  # name -> (network, its kwargs, one datum's shape)
    "mnist": ("unet", {"ch": 16, "ch_mult": [1, 2, 2], "num_res_blocks": 1, "attn_resolutions": [7], "dropout": 0.1},
              (1, 28, 28)),
    "toy": ("mlp", {"width": 128, "depth": 4, "temb_dim": 128}, (2,)),
}


def images_per_s(net: str, device: torch.device, steps: int, warmup: int, batch: int) -> float:
    """Images/s of `steps` timed loop steps after `warmup` untimed ones, on a fresh seeded state."""
    name, kwargs, shape = NETS[net]
    data = torch.randn((4000, *shape), generator=torch.Generator(device="cpu").manual_seed(0),
                       device="cpu").to(device)
    sched = make_schedule("linear", 1000)
    torch.manual_seed(0)
    state = TrainState.create(make_network(name, shape, **kwargs), 2e-3, 0, rt=device)

    def run(n: int) -> float:
        total = state.step + n
        p = OptimParams(seed=0, steps=total, batch_size=batch, lr=2e-3, lr_schedule="constant", warmup_steps=0,
                        ema_decay=0.995, grad_clip=1.0, log_every=LOG_EVERY,
                        checkpoint_every=LOG_EVERY * -(-total // LOG_EVERY))  # saves only after the last step
        history = {"step": [], "loss": [], "lr": []}
        with tempfile.TemporaryDirectory() as tmp:
            synchronize(device)
            t0 = time.perf_counter()
            train_loop("bench", p, state,
                       lambda lr: train_step(state, sched, data, batch_size=batch, lr=lr, grad_clip=1.0,
                                             ema_decay=0.995),
                       history, save=lambda path: None, partial=Path(tmp) / "x.partial")
            synchronize(device)
            return time.perf_counter() - t0

    run(warmup)
    return steps * batch / run(steps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--net", default="mnist", choices=list(NETS))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    rates = [images_per_s(args.net, device, args.steps, args.warmup, args.batch) for _ in range(args.repeats)]
    print(f"train loop, {args.net} {NETS[args.net][0]}, batch {args.batch}, {device} ({torch.get_num_threads()} threads): "
          f"{statistics.median(rates):.1f} images/s (median of {args.repeats}: "
          f"{', '.join(f'{r:.1f}' for r in rates)})")


if __name__ == "__main__":
    main()
