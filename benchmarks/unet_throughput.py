"""Benchmark: DDPM's CIFAR-10 UNet, training and sampling throughput under each runtime setting.

    .venv/bin/python benchmarks/unet_throughput.py [--device auto] [--batch 128] [--size 32] [--ch 128]
        [--warmup 3] [--iters 10] [--small] [--no-compile] [--threads 0]

The network is DDPM's CIFAR-10 UNet (Ho et al. 2020, appendix B: ch_mult (1, 2, 2, 2), two residual
blocks a level, attention at half the image size (16 for 32x32), dropout 0.1; 35.7M parameters at ch 128)
on stand-in images: throughput does not depend on pixel values. One row per setting of
`components/networks/runtime.py`: fp32 | bf16 x channels_last off | on x torch.compile off | on, eight in all.

- train img/s: images per second of one Adam step on L_simple (forward, backward, step; DDPM
  Algorithm 1 without the EMA), `iters` steps after `warmup`.
- sample evals/s: network evaluations per second in DDPM's ancestral sampler (`samplers.sample_ddpm`
  on an `iters`-step respaced chain, no grad): images x steps / s.
- warm-up s: the untimed warm-up (train and sampler), which holds torch.compile's compilation.

fp32 keeps PyTorch's default TF32 switches, as the stages do (on a GPU, cuDNN's convolutions may use TF32).
Timed regions begin and end with a device synchronise, and one untimed fp32 row runs first, so the
process's one-time costs (thread pools, the CUDA context) fall in no row. A failing setting (torch.compile
without a working compiler, say) is reported in its row's note and the others still run. --small is a
size for a CPU: batch 8, 16x16, ch 32, warm-up 1, 2 iterations; there the eager rows take about a minute
and each compiled row minutes more of compilation, which --no-compile skips.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components.math.diffusion import ReverseModel  # noqa: E402
from components.networks.runtime import Runtime, describe, forward_fn, generator, resolve_device, synchronize  # noqa: E402
from components.sampling.samplers import sample_ddpm  # noqa: E402
from components.math.schedules import make_schedule, make_trajectory, respace  # noqa: E402
from components.training.steps import l_simple  # noqa: E402
from components.networks.unet import UNet  # noqa: E402

SETTINGS = [(precision, channels_last, compile_) for compile_ in (False, True) for precision in ("fp32", "bf16")
            for channels_last in (False, True)]
SMALL = {"batch": 8, "size": 16, "ch": 32, "warmup": 1, "iters": 2}


def timed(fn, device: torch.device) -> float:
    """Wall seconds of fn(), the device's queue drained before and after."""
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t0


def bench(rt: Runtime, args: argparse.Namespace) -> dict[str, float]:
    """Train and sample throughput of a fresh UNet under `rt`, and the warm-up's seconds."""
    torch.manual_seed(0)
    shape = (3, args.size, args.size)
    net = UNet(shape, ch=args.ch, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(args.size // 2,),
               dropout=0.1).to(rt.device)
    forward = forward_fn(net, rt)
    opt = torch.optim.Adam(net.parameters(), lr=2e-4)
    sched = make_schedule("linear", 1000)
    g = generator(rt, 0)
    x0 = torch.rand((args.batch, *shape), generator=g, device=rt.device) * 2 - 1  # (B, C, H, W) in [-1, 1]

    def train(n: int) -> None:
        for _ in range(n):
            t = torch.randint(len(sched), (args.batch,), generator=g, device=rt.device)
            noise = torch.randn(x0.shape, generator=g, device=rt.device)
            loss = l_simple(forward, sched, x0, t, noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    def sample(steps: int) -> None:
        chain = respace(sched, make_trajectory("uniform", len(sched), steps))
        sample_ddpm(ReverseModel(forward), chain, torch.randn(x0.shape, generator=g, device=rt.device), generator=g)

    net.train()
    warm = timed(lambda: train(args.warmup), rt.device)
    train_s = timed(lambda: train(args.iters), rt.device)
    net.eval()
    warm += timed(lambda: sample(max(args.warmup, 2)), rt.device)
    sample_s = timed(lambda: sample(args.iters), rt.device)
    return {"train": args.batch * args.iters / train_s, "sample": args.batch * args.iters / sample_s, "warm": warm}


def release(device: torch.device) -> None:
    """Free the last row's compiled graphs and memory, so rows do not share caches or crowd each other."""
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def parse_sized(ap: argparse.ArgumentParser, small: dict) -> tuple[argparse.Namespace, torch.device]:
    """`ap`'s args with the options the throughput scripts share: --small (`small`'s sizes replace the args, for a
    CPU) and --threads (torch's CPU threads); and the device `--device` names, resolved."""
    ap.add_argument("--small", action="store_true", help="a CPU-sized run: " + ", ".join(
        f"{k} {v}" for k, v in small.items()))
    ap.add_argument("--threads", type=int, default=0, help="torch's CPU threads (0: torch's default)")
    args = ap.parse_args()
    if args.small:
        vars(args).update(small)
    if args.threads:
        torch.set_num_threads(args.threads)
    return args, resolve_device(args.device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--ch", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows (minutes on a CPU)")
    args, device = parse_sized(ap, SMALL)

    print(f"device: {describe(Runtime(device))}; torch {torch.__version__}")
    print(f"UNet ch {args.ch}, ch_mult (1, 2, 2, 2), 2 blocks, attention at {args.size // 2}, dropout 0.1; "
          f"batch {args.batch}, {args.size}x{args.size}; warm-up {args.warmup}, {args.iters} timed iterations\n")
    bench(Runtime(device), args)  # untimed: the process's one-time start-up costs
    release(device)
    print("| precision | channels_last | compile | train img/s | sample evals/s | warm-up s | note |")
    print("|---|---|---|---:|---:|---:|---|")
    for precision, channels_last, compile_ in SETTINGS:
        rt = Runtime(device, precision, channels_last, compile_)
        cells = [precision, "yes" if channels_last else "no", "yes" if compile_ else "no"]
        if compile_ and args.no_compile:
            print("| " + " | ".join(cells + ["-", "-", "-", "skipped (--no-compile)"]) + " |", flush=True)
            continue
        try:
            r = bench(rt, args)
            cells += [f"{r['train']:.1f}", f"{r['sample']:.1f}", f"{r['warm']:.1f}", ""]
        except Exception as err:  # a setting that cannot run is a finding, not a crash
            first = (str(err).strip().splitlines() or [""])[0][:120]
            cells += ["-", "-", "-", f"failed: {type(err).__name__}: {first}".replace("|", "/")]
        print("| " + " | ".join(cells) + " |", flush=True)
        release(device)


if __name__ == "__main__":
    main()
