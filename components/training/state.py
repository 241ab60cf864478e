"""The training state every trainer shares, its optimiser step, and its checkpoint: one mechanism for all.

A `TrainState` holds named networks, each with its optimiser and the forward the losses call
(`components.networks.runtime.forward_fn`: autocast, channels_last, compile), the EMA of the first network
(the one sampled from), one random generator and the step count. A diffusion model, the noise-aware
classifier and the digit evaluator train one network, "model"; DDGAN trains two, "G" and "D", with
the EMA of G. A trainer is then a step function over this state (`components.training.steps`,
`components.training.ddgan`, `components.scoring.evaluator`) and the loop (`pipelines.stages.trainer`).

Data parallel: the state's `replicas` (`components.training.parallel.Replicas`) says which share of each global batch
this process trains on; `create` gives every rank rank 0's initial weights and `network_step` averages the gradients
over the ranks before clipping. With the default, one process, neither does anything.

`checkpoint(state, config, history, **extra)` is a dict of CPU tensors and plain values, loadable with
`torch.load(..., weights_only=True)` on any machine, and `restore` loads one back onto the state's
device. Its layout: each network's weights under its name, the EMA under "ema", then the optimisers
(under "optimizer" for a one-network state, "opt_<name>" for each network otherwise), "step", "rng",
"config" and "history" (`checkpoint_keys`).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from components.networks.runtime import CPU, Forward, Runtime, forward_fn
from components.training.parallel import Replicas


def adam(params, lr: float, device: torch.device | str, *, weight_decay: float | None = None,
         betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.Optimizer:
    """Adam (AdamW with decoupled `weight_decay` when given), fused into one kernel per step on CUDA.

    On the CPU it is torch's default implementation, so CPU runs keep their bytes.
    """
    fused = {"fused": True} if torch.device(device).type == "cuda" else {}
    if weight_decay is None:
        return torch.optim.Adam(params, lr=lr, betas=betas, **fused)
    return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay, **fused)


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """theta_ema <- decay * theta_ema + (1 - decay) * theta, every parameter in one foreach call.

    On a GPU the foreach lerp is a few fused kernels instead of one launch per tensor (328 in DDPM's CIFAR-10
    UNet); on the CPU it is the same per-tensor lerp_, bit for bit.
    """
    torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1.0 - decay)


@dataclass
class TrainState:
    """Everything a run needs to resume exactly: the networks, the EMA of the first, the optimisers, step and RNG.

    `nets`, `optimizers` and `forwards` are keyed by the networks' names, in the order given; `forwards[name]`
    is what the losses call in place of `nets[name]` (it is not saved; the module is). `replicas`: this process's
    rank among the data-parallel ranks of the run (one process by default); every rank holds the same state.
    """

    nets: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    forwards: dict[str, Forward]
    ema: nn.Module
    generator: torch.Generator
    step: int = 0
    replicas: Replicas = Replicas()

    @classmethod
    def create(cls, nets: nn.Module | dict[str, nn.Module], lr: float | dict[str, float], seed: int, *,
               rt: Runtime | torch.device | str = CPU, weight_decay: float | None = None,
               betas: tuple[float, float] = (0.9, 0.999), replicas: Replicas = Replicas()) -> "TrainState":
        """One Adam per network (`adam`; `lr` one for all or one per name), the EMA of the first network, and the
        generator seeded by `seed` on rt.device. A module alone is the one network "model".

        Moves each network (in place) to rt.device, gives it rank 0's weights among several `replicas` (DDP's
        broadcast at the start), and sets its forward to `forward_fn(net, rt)` (which gives its weights rt's memory
        format) before the EMA copy is made, so the EMA has the model's memory format and the foreach EMA update
        pairs like with like. A bare device stands for fp32 eager contiguous there.
        """
        rt = rt if isinstance(rt, Runtime) else Runtime(torch.device(rt))
        nets = {"model": nets} if isinstance(nets, nn.Module) else dict(nets)
        lrs = lr if isinstance(lr, dict) else dict.fromkeys(nets, lr)
        for net in nets.values():
            replicas.broadcast_(net.to(rt.device))
        forwards = {name: forward_fn(net, rt) for name, net in nets.items()}
        ema = copy.deepcopy(next(iter(nets.values()))).requires_grad_(False)
        generator = torch.Generator(device=rt.device).manual_seed(seed)
        optimizers = {name: adam(net.parameters(), lrs[name], rt.device, weight_decay=weight_decay, betas=betas)
                      for name, net in nets.items()}
        return cls(nets, optimizers, forwards, ema, generator, replicas=replicas)

    @property
    def model(self) -> nn.Module:
        """The first network: the one the EMA follows and samplers use."""
        return next(iter(self.nets.values()))

    @property
    def forward(self) -> Forward:
        """The first network's forward."""
        return next(iter(self.forwards.values()))

    def networks(self) -> dict[str, nn.Module]:
        """The networks whose weights a checkpoint holds, by their keys there."""
        return {**self.nets, "ema": self.ema}

    def optimizer_keys(self) -> dict[str, str]:
        """network name -> its optimiser's key in a checkpoint: "optimizer" alone, "opt_<name>" among several."""
        if len(self.nets) == 1:
            return dict.fromkeys(self.nets, "optimizer")
        return {name: f"opt_{name.lower()}" for name in self.nets}


def network_step(state: TrainState, name: str, loss: torch.Tensor, *, lr: float, grad_clip: float) -> torch.Tensor:
    """Backward, the gradients' mean over the state's replicas (nothing in one process), global-norm clip (0
    disables), one optimiser step at `lr` of network `name`; the pre-clip gradient norm as a 0-dim device tensor (no
    host sync). Every rank then holds the same gradients, so the same clip and step keep the replicas equal.

    Disabled, the clip is clip_grad_norm_ at max_norm inf: the norm is measured and every gradient multiplied by
    exactly 1.0, so the weights are those of no clip at all, bit for bit.
    """
    opt, net = state.optimizers[name], state.nets[name]
    for group in opt.param_groups:
        group["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    state.replicas.average_gradients_(net.parameters())
    grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), grad_clip if grad_clip > 0 else math.inf)
    opt.step()
    return grad_norm


def end_step(state: TrainState, ema_decay: float) -> None:
    """After the step's optimiser steps: the EMA of the first network follows it, and state.step advances."""
    ema_update(state.ema, state.model, ema_decay)
    state.step += 1


def optimizer_step(state: TrainState, loss: torch.Tensor, *, lr: float, grad_clip: float,
                   ema_decay: float) -> dict[str, torch.Tensor | float]:
    """A one-network state's whole step after its loss: `network_step`, then `end_step`.

    Returns the loss and the pre-clip gradient norm as 0-dim device tensors (no host sync) and the lr.
    """
    (name,) = state.nets
    grad_norm = network_step(state, name, loss, lr=lr, grad_clip=grad_clip)
    end_step(state, ema_decay)
    return {"loss": loss.detach(), "grad_norm": grad_norm, "lr": lr}


# --- checkpoints ---------------------------------------------------------------------------------------------------


def to_cpu(obj: Any) -> Any:
    """obj with every tensor in its nested dicts, lists and tuples on the CPU; the very same object where all already
    are, so a CPU run's checkpoint pickles to the same bytes (state dicts keep their type and `_metadata`)."""
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        moved = {k: to_cpu(v) for k, v in obj.items()}
        if all(moved[k] is v for k, v in obj.items()):
            return obj
        out = copy.copy(obj)  # same class and attributes (an OrderedDict state dict keeps `_metadata`)
        out.update(moved)
        return out
    if isinstance(obj, (list, tuple)):
        moved = [to_cpu(v) for v in obj]
        if all(m is v for m, v in zip(moved, obj)):
            return obj
        return type(obj)(moved)
    return obj


def series_tensor(values: list) -> torch.Tensor:
    """Integer series (steps) stay int64, so a resumed history is identical to an unbroken one."""
    is_int = all(isinstance(v, int) for v in values)
    return torch.tensor(values, dtype=torch.int64 if is_int else torch.float64, device="cpu")


def checkpoint_keys(state: TrainState) -> tuple[str, ...]:
    """The keys every checkpoint of `state` holds (besides a trainer's `extra` ones), in their order."""
    return (*state.networks(), *state.optimizer_keys().values(), "step", "rng", "config", "history")


def checkpoint(state: TrainState, config: dict, history: dict[str, list], **extra: dict) -> dict:
    """A weights_only-loadable dict of CPU tensors: `extra` state first, then each network's weights, the EMA, the
    optimisers, step, RNG state, config and loss history. Written on a GPU, it loads on a CPU machine (`restore`
    moves it to the state's device)."""
    opt_keys = state.optimizer_keys()
    return {
        **to_cpu(extra),
        **{key: to_cpu(net.state_dict()) for key, net in state.networks().items()},
        **{opt_keys[name]: to_cpu(opt.state_dict()) for name, opt in state.optimizers.items()},
        "step": state.step,
        "rng": state.generator.get_state(),
        "config": config,
        "history": {k: series_tensor(v) for k, v in history.items()},
    }


def set_rng_state(generator: torch.Generator, rng: torch.Tensor) -> None:
    """generator.set_state(rng), with a clear error when the state was written by a generator of another device type."""
    try:
        generator.set_state(rng)
    except RuntimeError as err:
        raise ValueError(f"the checkpoint's RNG state ({rng.numel()} bytes) does not fit this run's {generator.device} "
                         "generator: a run resumes only on the device type it was started on (cpu or cuda)") from err


def restore(state: TrainState, ckpt: dict) -> dict[str, list]:
    """Load a `checkpoint()` dict into state in place, onto the state's device; return the loss history.

    The RNG state is a CPU generator's or a CUDA generator's, so a run resumes on the device type it started on.
    """
    for key, net in state.networks().items():
        net.load_state_dict(ckpt[key])
    opt_keys = state.optimizer_keys()
    for name, opt in state.optimizers.items():
        opt.load_state_dict(ckpt[opt_keys[name]])
    set_rng_state(state.generator, ckpt["rng"])
    state.step = int(ckpt["step"])
    return {k: v.tolist() for k, v in ckpt["history"].items()}
