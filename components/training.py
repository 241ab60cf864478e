"""Training steps and their parts: L_simple (DDPM), L_hybrid (iDDPM), the full bound (Sohl-Dickstein et al. 2015),
the noise-aware classifier's cross-entropy (ADM), timestep samplers, LR, EMA, checkpoints.

The loop itself lives in the stage; here are `train_step` / `hybrid_train_step` / `bound_train_step` /
`classifier_train_step(state, ...) -> metrics` and the pure pieces they are made of. Metrics are 0-dim tensors
left on the device (plus the float lr): nothing in a step waits for the device, and the loop
(`pipelines.trainer.train_loop`) reads them in one copy every `log_every` steps. A checkpoint is a dict of
CPU tensors and plain values, loadable with `torch.load(..., weights_only=True)` on any machine.

Devices: every random draw (minibatch, t, noise) comes from `state.generator` and lands on its device, so
a run is reproducible per device type (a CUDA generator's stream differs from the CPU's). The data may live
on the host or on that device (`minibatch`); the stages put the training split on the device, so a draw is an
index there and no batch crosses the bus. Losses call the network through `state.forward`
(`components.runtime.forward_fn`: autocast, channels_last, compile), the model itself by default.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from components.diffusion import ReverseModel, model_timesteps, p_mean_variance, q_sample, reverse_kernel, split_output
from components.likelihood import vlb_term
from components.runtime import CPU, Forward, Runtime, forward_fn  # Forward: (x_t, t) -> output
from components.schedules import Schedule




def l_simple(model: Forward, sched: Schedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """DDPM eq. 14: L_simple = E ||eps - eps_theta(sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t)||^2."""
    eps_pred = model(q_sample(sched, x0, t, noise), model_timesteps(sched, t))
    return (eps_pred - noise).pow(2).mean()


def lr_at(step: int, *, lr: float, warmup_steps: int, total_steps: int, schedule: str) -> float:
    """Learning rate at `step`: linear warm-up, then constant or cosine decay to 0 at total_steps."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return lr * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


from components.registry import TIMESTEP_SAMPLERS  # noqa: E402  (names the two classes below)


def hybrid_losses(model: Forward, sched: Schedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, *,
                  decoder: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample L_simple and L_t of iDDPM §3.1, each (B,): the two halves of L_hybrid.

    L_t (DDPM eq. 5's term at t, in bits per dimension) sees the eps output DETACHED, so it
    trains only Sigma (through v); the mean is left to L_simple (iDDPM's stop-gradient).
    """
    x_t = q_sample(sched, x0, t, noise)
    eps, v = split_output(model(x_t, model_timesteps(sched, t)), x_t)
    if v is None:
        raise ValueError("L_hybrid needs a model with a variance output (out_mult=2)")
    simple = (eps - noise).pow(2).reshape(len(x0), -1).mean(1)
    mean, log_var, _ = p_mean_variance(sched, x_t, t, eps.detach(), v, variance="learned")
    vlb = vlb_term(sched, x0, x_t, t, mean, log_var, decoder) / (x0[0].numel() * math.log(2))
    return simple, vlb


def bound_losses(model: ReverseModel, sched: Schedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, *,
                 decoder: str) -> torch.Tensor:
    """Per-sample L_t (B,) in bits per dimension, the bound's term at t with gradients through mean and Sigma.

    Sohl-Dickstein et al. 2015 train on the bound K itself (eqs. 13-14): minus the posterior KL
    KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t)) at each t, closed form for Gaussians; T L_t at a uniform
    t is an unbiased estimate of the whole sum (their per-example t). At t = 0 the term is the
    decoder's NLL, which their fixed last step gives no parameters.
    """
    x_t = q_sample(sched, x0, t, noise)
    mean, log_var = reverse_kernel(sched, x_t, t, model(x_t, model_timesteps(sched, t)), variance="learned")
    return vlb_term(sched, x0, x_t, t, mean, log_var, decoder) / (x0[0].numel() * math.log(2))


class UniformTimesteps:
    """t ~ U{0..T-1} with unit weights."""

    def __init__(self, T: int):
        self.T = T

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(t, weights), each (n,), on the generator's device."""
        device = generator.device
        return torch.randint(self.T, (n,), generator=generator, device=device), torch.ones(n, device=device)

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class LossSecondMomentTimesteps(UniformTimesteps):
    """iDDPM §3.3 importance sampling: p_t ∝ sqrt(E[L_t^2]) over the last `history` losses at each t.

    p_t is mixed with `uniform_prob` of the uniform distribution, and sampling stays uniform
    until every t has `history` losses. Samples carry the weights 1 / (T p_t), so the weighted
    loss is an unbiased estimate of the uniform-t loss.
    """

    def __init__(self, T: int, history: int = 10, uniform_prob: float = 0.001):
        super().__init__(T)
        self.uniform_prob = uniform_prob
        self.losses = np.zeros((T, history))  # ring buffer per t
        self.counts = np.zeros(T, dtype=np.int64)  # losses seen per t

    def probs(self) -> np.ndarray | None:
        """p_t (T,), or None while some t has fewer than `history` losses (then sampling is uniform)."""
        if self.counts.min() < self.losses.shape[1]:
            return None
        p = np.sqrt(np.mean(self.losses**2, axis=1))
        p = p / p.sum()
        return p * (1 - self.uniform_prob) + self.uniform_prob / self.T

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.probs()
        if p is None:
            return super().sample(n, generator)
        device = generator.device
        t = torch.multinomial(torch.from_numpy(p).to(device), n, replacement=True, generator=generator)
        return t, torch.from_numpy(1.0 / (self.T * p[t.cpu().numpy()])).float().to(device)

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Record each sample's loss at its t, oldest first out."""
        history = self.losses.shape[1]
        for ti, loss in zip(t.tolist(), losses.tolist()):
            self.losses[ti, self.counts[ti] % history] = loss
            self.counts[ti] += 1

    def state_dict(self) -> dict:
        return {"losses": torch.from_numpy(self.losses.copy()), "counts": torch.from_numpy(self.counts.copy())}

    def load_state_dict(self, state: dict) -> None:
        self.losses = state["losses"].numpy().copy()
        self.counts = state["counts"].numpy().copy()




def make_timestep_sampler(name: str, T: int, history: int = 10, uniform_prob: float = 0.001) -> UniformTimesteps:
    """The named timestep sampler over T steps (the importance options apply to loss_second_moment)."""
    if name == "uniform":
        return UniformTimesteps(T)
    return TIMESTEP_SAMPLERS[name](T, history, uniform_prob)


def minibatch(data: torch.Tensor, batch_size: int, generator: torch.Generator, *, labels: torch.Tensor | None = None,
              hflip: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A minibatch (x0, y) drawn with replacement (DDPM Algorithm 1's x0 ~ q(x0)), on the generator's device.

    Indices are drawn first, then, with `hflip`, one flip decision per image: DDPM's random horizontal
    flip (appendix B), each image mirrored along its last axis with probability 1/2. Without hflip the
    draws are exactly `data[torch.randint(len(data), (batch_size,), generator=generator)]`. `data` (and
    `labels`) may live on the host or on the generator's device; y is None without labels.
    """
    device = generator.device
    idx = torch.randint(len(data), (batch_size,), generator=generator, device=device)
    x0 = data[idx.to(data.device)].to(device)
    y = None if labels is None else labels[idx.to(labels.device)].to(device)
    if hflip:
        if x0.ndim != 4:
            raise ValueError(f"hflip flips images (B, C, H, W); this data is {tuple(x0.shape)}")
        flip = torch.rand(batch_size, generator=generator, device=device) < 0.5
        x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)  # (B, C, H, W)
    return x0, y


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """theta_ema <- decay * theta_ema + (1 - decay) * theta, every parameter in one foreach call.

    On a GPU the foreach lerp is a few fused kernels instead of one launch per tensor (328 in DDPM's CIFAR-10
    UNet); on the CPU it is the same per-tensor lerp_, bit for bit.
    """
    torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1.0 - decay)


@dataclass
class TrainState:
    """Everything a run needs to resume exactly: weights, EMA, optimiser, step and RNG.

    `forward` is what the losses call, (x_t, t) -> output: the model itself unless the stage sets
    `runtime.forward_fn(state.model, rt)`; it is not saved, and `model` stays the module checkpointed.
    """

    model: nn.Module
    ema: nn.Module
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    step: int = 0
    forward: Forward | None = None

    def __post_init__(self) -> None:
        if self.forward is None:
            self.forward = self.model

    @classmethod
    def create(cls, model: nn.Module, lr: float, seed: int, *, weight_decay: float | None = None,
               rt: Runtime | torch.device | str = CPU) -> "TrainState":
        """Adam; AdamW with decoupled weight decay when `weight_decay` is given (ADM's classifier).

        Moves `model` (in place) to rt.device and sets `forward` to `forward_fn(model, rt)` (which gives its
        weights rt's memory format) before the EMA copy is made, so the EMA has the model's memory format and
        the foreach EMA update pairs like with like; the optimiser is fused on CUDA, and the generator is
        seeded on rt.device. A bare device stands for fp32 eager contiguous there.
        """
        rt = rt if isinstance(rt, Runtime) else Runtime(torch.device(rt))
        model.to(rt.device)
        forward = forward_fn(model, rt)
        ema = copy.deepcopy(model).requires_grad_(False)
        generator = torch.Generator(device=rt.device).manual_seed(seed)
        return cls(model, ema, adam(model.parameters(), lr, rt.device, weight_decay=weight_decay), generator,
                   forward=forward)

    def networks(self) -> dict[str, nn.Module]:
        """The networks whose weights a checkpoint holds, by name."""
        return {"model": self.model, "ema": self.ema}


def adam(params, lr: float, device: torch.device | str, *, weight_decay: float | None = None,
         betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.Optimizer:
    """Adam (AdamW with decoupled `weight_decay` when given), fused into one kernel per step on CUDA.

    On the CPU it is torch's default implementation, so CPU runs keep their bytes.
    """
    fused = {"fused": True} if torch.device(device).type == "cuda" else {}
    if weight_decay is None:
        return torch.optim.Adam(params, lr=lr, betas=betas, **fused)
    return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay, **fused)


def optimizer_step(state: TrainState, loss: torch.Tensor, *, lr: float, grad_clip: float,
                   ema_decay: float) -> dict[str, torch.Tensor | float]:
    """Backward, global-norm clip (0 disables), Adam step at `lr`, EMA update; advances state.step.

    Returns the loss and the pre-clip gradient norm as 0-dim device tensors (no host sync) and the lr.
    """
    for group in state.optimizer.param_groups:
        group["lr"] = lr
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(state.model.parameters(), grad_clip if grad_clip > 0 else math.inf)
    state.optimizer.step()
    ema_update(state.ema, state.model, ema_decay)
    state.step += 1
    return {"loss": loss.detach(), "grad_norm": grad_norm, "lr": lr}


def train_step(
    state: TrainState, sched: Schedule, data: torch.Tensor, *, batch_size: int, lr: float, grad_clip: float,
    ema_decay: float, hflip: bool = False,
) -> dict[str, torch.Tensor | float]:
    """One DDPM step (Algorithm 1): L_simple with t ~ U{0..T-1} on a minibatch of `data` (model space).

    hflip: DDPM's random horizontal flips of images (appendix B; `minibatch`).
    """
    g = state.generator
    x0, _ = minibatch(data, batch_size, g, hflip=hflip)
    t = torch.randint(len(sched), (batch_size,), generator=g, device=g.device)
    noise = torch.randn(x0.shape, generator=g, device=g.device)
    return optimizer_step(state, l_simple(state.forward, sched, x0, t, noise), lr=lr, grad_clip=grad_clip,
                          ema_decay=ema_decay)


def hybrid_train_step(
    state: TrainState, sched: Schedule, data: torch.Tensor, timesteps: UniformTimesteps, *, batch_size: int,
    lambda_vlb: float, decoder: str, lr: float, grad_clip: float, ema_decay: float, hflip: bool = False,
) -> dict[str, torch.Tensor | float]:
    """One iDDPM step on L_hybrid = L_simple + lambda L_vlb (§3.1), L_vlb estimated as T L_t, t from `timesteps`.

    The importance weights 1/(T p_t) multiply the whole per-sample loss, so both terms stay
    unbiased; the sampler's history tracks L_t, the term importance sampling is for (§3.3).
    """
    g = state.generator
    x0, _ = minibatch(data, batch_size, g, hflip=hflip)
    t, weights = timesteps.sample(batch_size, g)
    noise = torch.randn(x0.shape, generator=g, device=g.device)
    simple, vlb = hybrid_losses(state.forward, sched, x0, t, noise, decoder=decoder)
    T = len(sched)
    loss = (weights * (simple + lambda_vlb * T * vlb)).mean()
    simple, vlb = simple.detach(), vlb.detach()
    timesteps.update(t, vlb)
    metrics = optimizer_step(state, loss, lr=lr, grad_clip=grad_clip, ema_decay=ema_decay)
    # T L_t averaged: the one-sample estimate of sum_t L_t, the bound without its prior term (bits/dim)
    return {**metrics, "l_simple": (weights * simple).mean(), "l_vlb": (weights * T * vlb).mean()}


def bound_train_step(
    state: TrainState, sched: Schedule, data: torch.Tensor, timesteps: UniformTimesteps, *, batch_size: int,
    output: str, decoder: str, lr: float, grad_clip: float, ema_decay: float, hflip: bool = False,
) -> dict[str, torch.Tensor | float]:
    """One step on the full bound, L_vlb estimated as T L_t (Sohl-Dickstein et al. 2015 eq. 14), t from `timesteps`.

    Uniform t is the paper's; loss_second_moment is iDDPM's importance sampling (§3.3), for which the
    weights 1 / (T p_t) keep the estimate unbiased. The loss is in bits per dimension.
    """
    g = state.generator
    x0, _ = minibatch(data, batch_size, g, hflip=hflip)
    t, weights = timesteps.sample(batch_size, g)
    noise = torch.randn(x0.shape, generator=g, device=g.device)
    vlb = bound_losses(ReverseModel(state.forward, output), sched, x0, t, noise, decoder=decoder)
    timesteps.update(t, vlb.detach())
    return optimizer_step(state, (weights * len(sched) * vlb).mean(), lr=lr, grad_clip=grad_clip, ema_decay=ema_decay)


def classifier_losses(classifier: Forward, sched: Schedule, x0: torch.Tensor, y: torch.Tensor, t: torch.Tensor,
                      noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample cross-entropy of p_phi(y | x_t, t) on x_t = q_sample(x0, t), and whether argmax is right (ADM §4.1)."""
    logits = classifier(q_sample(sched, x0, t, noise), model_timesteps(sched, t))
    return torch.nn.functional.cross_entropy(logits, y, reduction="none"), logits.argmax(-1) == y


def classifier_train_step(
    state: TrainState, sched: Schedule, data: torch.Tensor, labels: torch.Tensor, *, batch_size: int, lr: float,
    grad_clip: float, ema_decay: float,
) -> dict[str, torch.Tensor | float]:
    """One step of the noise-aware classifier: cross-entropy with t ~ U{0..T-1}, the diffusion's own schedule."""
    g = state.generator
    x0, y = minibatch(data, batch_size, g, labels=labels)
    t = torch.randint(len(sched), (batch_size,), generator=g, device=g.device)
    noise = torch.randn(x0.shape, generator=g, device=g.device)
    ce, correct = classifier_losses(state.forward, sched, x0, y, t, noise)
    metrics = optimizer_step(state, ce.mean(), lr=lr, grad_clip=grad_clip, ema_decay=ema_decay)
    return {**metrics, "accuracy": correct.float().mean()}


@torch.no_grad()
def accuracy_by_t(classifier, sched: Schedule, x0: torch.Tensor, y: torch.Tensor, buckets: int,
                  generator: torch.Generator, batch_size: int = 10_000) -> tuple[np.ndarray, np.ndarray]:
    """Top-1 accuracy of a noise-aware classifier in `buckets` equal t-ranges of [0, T): (edges (buckets+1,), acc).

    Every x0 is noised once per bucket, at a t drawn uniformly within the bucket; `generator` is on x0's device.
    """
    T = len(sched)
    edges = np.linspace(0, T, buckets + 1).round().astype(np.int64)
    acc = np.zeros(buckets)
    for b in range(buckets):
        correct = 0
        for start in range(0, len(x0), batch_size):
            xb, yb = x0[start:start + batch_size], y[start:start + batch_size]
            t = torch.randint(int(edges[b]), int(edges[b + 1]), (len(xb),), generator=generator, device=xb.device)
            noise = torch.randn(xb.shape, generator=generator, device=xb.device)
            correct += int(classifier_losses(classifier, sched, xb, yb, t, noise)[1].sum())
        acc[b] = correct / len(x0)
    return edges, acc


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


def checkpoint(state: TrainState, config: dict, history: dict[str, list[float]], **extra: dict) -> dict:
    """A weights_only-loadable dict of CPU tensors: weights, EMA, optimiser, step, RNG state, config, loss history and
    `extra` state. Written on a GPU, it loads on a CPU machine (`restore` moves it to the state's device)."""
    return {
        **to_cpu(extra),
        "model": to_cpu(state.model.state_dict()),
        "ema": to_cpu(state.ema.state_dict()),
        "optimizer": to_cpu(state.optimizer.state_dict()),
        "step": state.step,
        "rng": state.generator.get_state(),
        "config": config,
        "history": {k: series_tensor(v) for k, v in history.items()},
    }


def series_tensor(values: list) -> torch.Tensor:
    """Integer series (steps) stay int64, so a resumed history is identical to an unbroken one."""
    is_int = all(isinstance(v, int) for v in values)
    return torch.tensor(values, dtype=torch.int64 if is_int else torch.float64, device="cpu")


def set_rng_state(generator: torch.Generator, rng: torch.Tensor) -> None:
    """generator.set_state(rng), with a clear error when the state was written by a generator of another device type."""
    try:
        generator.set_state(rng)
    except RuntimeError as err:
        raise ValueError(f"the checkpoint's RNG state ({rng.numel()} bytes) does not fit this run's {generator.device} "
                         "generator: a run resumes only on the device type it was started on (cpu or cuda)") from err


CHECKPOINT_KEYS = ("model", "ema", "optimizer", "step", "rng", "config", "history")


def restore(state: TrainState, ckpt: dict) -> dict[str, list[float]]:
    """Load a `checkpoint()` dict into state in place, onto the state's device; return the loss history.

    The RNG state is a CPU generator's or a CUDA generator's, so a run resumes on the device type it started on.
    """
    state.model.load_state_dict(ckpt["model"])
    state.ema.load_state_dict(ckpt["ema"])
    state.optimizer.load_state_dict(ckpt["optimizer"])
    set_rng_state(state.generator, ckpt["rng"])
    state.step = int(ckpt["step"])
    return {k: v.tolist() for k, v in ckpt["history"].items()}
