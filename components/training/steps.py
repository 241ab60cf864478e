"""Training steps and their parts: L_simple (DDPM), L_hybrid (iDDPM), the full bound (Sohl-Dickstein et al. 2015),
the noise-aware classifier's cross-entropy (ADM), timestep samplers, minibatches, the LR schedule.

The loop lives in `pipelines.stages.trainer`; here are `train_step` / `hybrid_train_step` / `bound_train_step` /
`classifier_train_step(state, ...) -> metrics` and the pure pieces they are made of, each step a loss over a
`components.training.state.TrainState` followed by its `optimizer_step`. Metrics are 0-dim tensors left on the
device (plus the float lr): nothing in a step waits for the device, and the loop
(`pipelines.stages.trainer.train_loop`) reads them in one copy every `log_every` steps.

Devices: every random draw (minibatch, t, noise) comes from `state.generator` and lands on its device, so
a run is reproducible per device type (a CUDA generator's stream differs from the CPU's). The data may live
on the host or on that device (`minibatch`); the stages put the training split on the device, so a draw is an
index there and no batch crosses the bus. Losses call the network through `state.forward`
(`components.networks.runtime.forward_fn`: autocast, channels_last, compile), the model itself by default.

Data parallel: a step draws the GLOBAL batch (indices, flips, t, noise) exactly as one process does, then keeps its
rank's share (`state.replicas.share`) before the loss; the union of the shares is the one-process batch. Whatever
must see the whole batch (the importance sampler's loss history) gathers it back first.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from components.math.diffusion import ReverseModel, model_timesteps, p_mean_variance, q_sample, reverse_kernel, split_output
from components.math.likelihood import vlb_term
from components.networks.runtime import Forward  # (x_t, t) -> output
from components.math.schedules import Schedule
from components.training.state import TrainState, optimizer_step


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


from components.training.registry import TIMESTEP_SAMPLERS  # noqa: E402  (names the two classes below)


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
    x0, t, noise = state.replicas.share(x0, t, noise)
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
    g, share = state.generator, state.replicas.share
    x0, _ = minibatch(data, batch_size, g, hflip=hflip)
    t, weights = timesteps.sample(batch_size, g)
    noise = torch.randn(x0.shape, generator=g, device=g.device)
    x0, t, weights, noise = share(x0, t, weights, noise)
    simple, vlb = hybrid_losses(state.forward, sched, x0, t, noise, decoder=decoder)
    T = len(sched)
    loss = (weights * (simple + lambda_vlb * T * vlb)).mean()
    simple, vlb = simple.detach(), vlb.detach()
    timesteps.update(state.replicas.gather(t), state.replicas.gather(vlb))  # the whole batch's L_t, in batch order
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
    x0, t, weights, noise = state.replicas.share(x0, t, weights, noise)
    vlb = bound_losses(ReverseModel(state.forward, output), sched, x0, t, noise, decoder=decoder)
    timesteps.update(state.replicas.gather(t), state.replicas.gather(vlb.detach()))  # the whole batch's L_t
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
    x0, y, t, noise = state.replicas.share(x0, y, t, noise)
    ce, correct = classifier_losses(state.forward, sched, x0, y, t, noise)
    metrics = optimizer_step(state, ce.mean(), lr=lr, grad_clip=grad_clip, ema_decay=ema_decay)
    return {**metrics, "accuracy": correct.float().mean()}


@torch.no_grad()
def accuracy_by_t(classifier, sched: Schedule, x0: torch.Tensor, y: torch.Tensor, buckets: int,
                  generator: torch.Generator, batch_size: int = 10_000,
                  forward_batch: int = 1_000) -> tuple[np.ndarray, np.ndarray]:
    """Top-1 accuracy of a noise-aware classifier in `buckets` equal t-ranges of [0, T): (edges (buckets+1,), acc).

    Every x0 is noised once per bucket, at a t drawn uniformly within the bucket; `generator` is on x0's device.
    t and the noise are drawn for `batch_size` samples at a time; the classifier then sees them `forward_batch` at
    a time, so a conv net on a 10,000-digit split never holds all its activations at once, and the draws, hence
    the result, do not depend on forward_batch.
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
            for i in range(0, len(xb), forward_batch):
                f = slice(i, i + forward_batch)
                correct += int(classifier_losses(classifier, sched, xb[f], yb[f], t[f], noise[f])[1].sum())
        acc[b] = correct / len(x0)
    return edges, acc
