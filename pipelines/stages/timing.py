"""A cell's speed, the trilemma's third axis: measured apart from its samples, robust to a busy machine.

A single timed run of the whole draw takes whatever else the machine was doing with it: on a
2-core machine with other work beside it, identical cells were measured 3-15 times apart. So a
cell is timed over `repeats` short draws (one batch of `n` samples each, after `warmup` untimed
ones), in a fixed number of CPU threads (one by default: with torch's default of one thread per
core, a single busy core stalls every parallel region), and reported as the median seconds per
1,000 samples with the interquartile range as its spread. The samples themselves come from the
untimed full draw, so they stay deterministic in the seed and their file's bytes never change;
the timing goes to a metrics file of its own, with what it ran on.
"""

from __future__ import annotations

import platform
import time
from contextlib import contextmanager
from typing import Callable

import numpy as np
import torch


@contextmanager
def torch_threads(n: int):
    """torch's intra-op CPU threads set to n (0: leave the default) inside the block."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def cpu_name() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what the platform module knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def time_draws(draw: Callable[[int, int], torch.Tensor], *, n: int, repeats: int, warmup: int, threads: int,
               device: torch.device = torch.device("cpu")) -> dict:
    """Seconds per 1,000 samples of `draw(n, seed)` over `repeats` timed calls: median, IQR, and the setting.

    Each call draws one batch of n samples with its own seed (never the samples' seed); CUDA work is
    synchronised before each clock read, so the time is the device's, not the launch queue's.
    """
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    per_1k = []
    with torch_threads(threads) as used:
        for i in range(warmup + repeats):
            sync()
            t0 = time.perf_counter()
            draw(n, 1_000_003 + i)
            sync()
            if i >= warmup:
                per_1k.append((time.perf_counter() - t0) / n * 1000)
    q25, median, q75 = np.percentile(per_1k, [25, 50, 75])
    return {"wall_s_per_1k": float(median), "wall_s_per_1k_iqr": float(q75 - q25), "wall_s_per_1k_min": min(per_1k),
            "wall_s_per_1k_max": max(per_1k), "repeats": repeats, "n": n, "threads": used,
            "device": f"{device.type}: {device_name(device)}", "torch": torch.__version__}
