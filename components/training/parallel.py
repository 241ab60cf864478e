"""Data parallelism over torch.distributed ranks: each rank's share of a batch, and the gradient mean.

`Replicas(rank, world)` is this process's place among `world` replicas of one training run (a torchrun world;
`pipelines.plumbing.distributed` sets one up). Every rank draws the GLOBAL batch from the run's one seeded generator,
exactly as a single process does, and keeps its share, rows [rank B / world, (rank + 1) B / world); so the union of
the shares is the one-process batch and every rank's generator stays in lockstep. After backward, the gradients are
averaged over the ranks: the mean of `world` equal shares' mean-loss gradients is the gradient of the batch's mean
loss, up to the order of the float sums. `Replicas()` (world 1) does nothing at all: no collective, no copy.

Why by hand and not torch's DistributedDataParallel: DDGAN (Xiao et al. 2022) freezes D with requires_grad_(False)
for its generator step and takes its R1 penalty with torch.autograd.grad(create_graph=True); DDP's reducer supports
neither (a frozen parameter's hook never fires, and it refuses double backward). One all-reduce after backward, in
one place (`components.training.state.network_step`), serves every trainer.

The collectives run in the default process group on the tensors' device (gloo on the CPU, NCCL on CUDA).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Replicas:
    """This rank among `world` data-parallel replicas; the default, world 1, is a run in one process."""

    rank: int = 0
    world: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world:
            raise ValueError(f"rank {self.rank} is not among the {self.world} ranks")

    @property
    def leader(self) -> bool:
        """Rank 0: the one that writes checkpoints, plots and logs."""
        return self.rank == 0

    def share(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Each tensor's rows [rank B / world, (rank + 1) B / world) (B its first dimension); the tensors themselves
        in world 1. ValueError when B does not split into `world` equal shares."""
        if self.world == 1:
            return tensors
        out = []
        for x in tensors:
            if len(x) % self.world:
                raise ValueError(f"a batch of {len(x)} does not split into {self.world} equal shares")
            n = len(x) // self.world
            out.append(x[self.rank * n:(self.rank + 1) * n])
        return tuple(out)

    @torch.no_grad()
    def broadcast_(self, module: nn.Module) -> None:
        """Rank 0's parameters and buffers copied into `module` on every rank (in place), as DDP does at its start."""
        if self.world == 1:
            return
        for tensor in (*module.parameters(), *module.buffers()):
            dense = tensor.contiguous()  # a channels_last weight travels in NCHW order
            dist.broadcast(dense, src=0)
            if dense is not tensor:
                tensor.copy_(dense)

    @torch.no_grad()
    def average_gradients_(self, params: Iterable[nn.Parameter]) -> None:
        """Every existing gradient of `params` replaced by its mean over the ranks: one all-reduce (sum) of one flat
        buffer, divided by world (DDP's gradient mean). Parameters without a gradient are left out on every rank
        alike (the same code runs everywhere)."""
        if self.world == 1:
            return
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])  # (sum of numel,)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.world
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view(g.shape))
            offset += g.numel()

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """Every rank's `x` (each the same shape) concatenated in rank order along dim 0: the global batch back from
        the shares; x itself in world 1."""
        if self.world == 1:
            return x
        parts = [torch.empty_like(x) for _ in range(self.world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    def mean(self, x: torch.Tensor) -> torch.Tensor:
        """The mean over the ranks of each entry of x, NaN entries left out (a per-t loss is NaN on a rank whose
        share has no sample at t); NaN where every rank has NaN. x itself in world 1."""
        if self.world == 1:
            return x
        known = ~x.isnan()
        sums = torch.stack([torch.where(known, x, torch.zeros_like(x)), known.to(x.dtype)])  # (2, ...)
        dist.all_reduce(sums, op=dist.ReduceOp.SUM)
        return sums[0] / sums[1]  # 0 / 0 = NaN
