"""The trainers' sections: what every optimiser shares, each trainer's own options, and the networks they train.

train_ddpm (DDPM's L_simple), finetune_iddpm (iDDPM's L_hybrid), train_sd2015 (Sohl-Dickstein et al. 2015's bound K),
train_classifier (ADM's noise-aware classifier), train_ddgan (Xiao et al. 2022) and evaluate.train (the digit
features). A network section is a name from its registry plus its constructor's options, which the converter
(pipelines.params.convert) checks against the constructor's signature.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from components.networks.registry import CLASSIFIERS, DISCRIMINATORS, GENERATORS, NETWORKS
from components.training.registry import LR_SCHEDULES, TIMESTEP_SAMPLERS
from components.math.schedules import SCHEDULES
from pipelines.params.fields import MAX_BATCH, MAX_STEPS, between, choice, require, seed_in_range


@dataclass(frozen=True)
class NetworkParams:
    """A network by name plus its constructor's keyword arguments (checked against its signature)."""

    registry: ClassVar[dict] = NETWORKS
    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ClassifierNetworkParams(NetworkParams):
    """A noise-aware classifier by name (components.networks.registry.CLASSIFIERS) plus its keyword arguments:
    "mlp" for flat data (points), "unet" for images (ADM's UNet encoder with an attention pool)."""

    registry: ClassVar[dict] = CLASSIFIERS


@dataclass(frozen=True)
class GeneratorNetworkParams(NetworkParams):
    """A DDGAN generator by name (components.networks.mlp.GENERATORS) plus its keyword arguments."""

    registry: ClassVar[dict] = GENERATORS


@dataclass(frozen=True)
class DiscriminatorNetworkParams(NetworkParams):
    """A DDGAN discriminator by name (components.networks.mlp.DISCRIMINATORS) plus its keyword arguments."""

    registry: ClassVar[dict] = DISCRIMINATORS


@dataclass(frozen=True, kw_only=True)
class OptimParams:
    """What every trainer shares: budget, optimiser, LR schedule, EMA, logging and checkpoints."""

    seed: int
    steps: int  # optimiser steps: the training budget
    batch_size: int
    lr: float
    lr_schedule: str  # constant | cosine (after warm-up)
    warmup_steps: int
    ema_decay: float
    grad_clip: float  # global-norm clip; 0 disables
    log_every: int  # loss-curve resolution, in steps
    checkpoint_every: int  # resume-checkpoint interval, in steps

    def __post_init__(self):
        seed_in_range("seed", self.seed)
        between("steps", self.steps, 1, MAX_STEPS)
        between("batch_size", self.batch_size, 1, MAX_BATCH)
        require(self.lr > 0, "lr", "must be > 0")
        choice("lr_schedule", self.lr_schedule, LR_SCHEDULES, "lr schedule")
        require(0 <= self.warmup_steps <= self.steps, "warmup_steps", "must be in [0, steps]")
        require(0 <= self.ema_decay < 1, "ema_decay", "must be in [0, 1)")
        require(self.grad_clip >= 0, "grad_clip", "must be >= 0 (0 disables clipping)")
        between("log_every", self.log_every, 1, MAX_STEPS)
        between("checkpoint_every", self.checkpoint_every, 1, MAX_STEPS)
        # resuming at a log boundary keeps the loss curve identical to an unbroken run
        require(self.checkpoint_every % self.log_every == 0, "checkpoint_every", "must be a multiple of log_every")


@dataclass(frozen=True, kw_only=True)
class TrainParams(OptimParams):
    """train_ddpm: a network from scratch on L_simple."""

    network: NetworkParams


@dataclass(frozen=True, kw_only=True)
class BoundOptimParams(OptimParams):
    """A trainer whose loss holds the bound's L_t at sampled t: how t is drawn."""

    timestep_sampler: str  # uniform | loss_second_moment (iDDPM §3.3 importance sampling)
    importance_history: int  # losses kept per t (iDDPM: 10)
    importance_uniform: float  # share of uniform mixed into p_t (iDDPM: 0.001)

    def __post_init__(self):
        super().__post_init__()
        choice("timestep_sampler", self.timestep_sampler, TIMESTEP_SAMPLERS, "timestep sampler")
        between("importance_history", self.importance_history, 1, 10_000)
        require(0 < self.importance_uniform <= 1, "importance_uniform", "must be in (0, 1]")


@dataclass(frozen=True, kw_only=True)
class FinetuneParams(BoundOptimParams):
    """finetune_iddpm: the DDPM model plus a variance output, on L_hybrid (iDDPM §3.1)."""

    lambda_vlb: float  # L_hybrid = L_simple + lambda_vlb * L_vlb; iDDPM: 0.001

    def __post_init__(self):
        super().__post_init__()
        require(self.lambda_vlb >= 0, "lambda_vlb", f"must be >= 0, got {self.lambda_vlb}")


@dataclass(frozen=True, kw_only=True)
class SD2015Params(BoundOptimParams):
    """train_sd2015: Sohl-Dickstein et al. 2015's model from scratch on the full bound K (eq. 14)."""

    network: NetworkParams


@dataclass(frozen=True, kw_only=True)
class ClassifierParams(OptimParams):
    """train_classifier: p_phi(y | x_t, t) on cross-entropy over the diffusion's noise levels (ADM §4.1), AdamW."""

    network: ClassifierNetworkParams
    weight_decay: float  # AdamW's decoupled weight decay (ADM: 0.05)
    accuracy_buckets: int  # held-out accuracy is reported in this many equal t-ranges of [0, T)

    def __post_init__(self):
        super().__post_init__()
        require(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        require(self.accuracy_buckets >= 1, "accuracy_buckets", "must be >= 1")


@dataclass(frozen=True, kw_only=True)
class DDGANTrainParams(OptimParams):
    """train_ddgan: G and D of a Denoising Diffusion GAN on T steps of `schedule` (Xiao et al. 2022).

    `lr` is the generator's, `lr_d` the discriminator's; both follow `lr_schedule`. The EMA is
    G's (sampling uses it); grad_clip (0: off) applies to both networks.
    """

    schedule: str  # beta schedule over T steps, from components.math.schedules.SCHEDULES (DDGAN: ddgan_vp)
    lr_d: float
    adam_betas: list[float]  # Adam's (beta1, beta2) for both networks (DDGAN: 0.5, 0.9)
    r1_gamma: float  # R1 weight: D's loss adds r1_gamma / 2 * E||grad D(real)||^2
    r1_every: int  # lazy R1: the penalty on every r1_every-th D step (DDGAN: 15)
    generator: GeneratorNetworkParams
    discriminator: DiscriminatorNetworkParams

    def __post_init__(self):
        super().__post_init__()
        choice("schedule", self.schedule, SCHEDULES, "schedule")
        require(self.lr_d > 0, "lr_d", "must be > 0")
        require(len(self.adam_betas) == 2 and all(0 <= b < 1 for b in self.adam_betas), "adam_betas",
                f"must be two numbers in [0, 1), got {self.adam_betas}")
        require(self.r1_gamma >= 0, "r1_gamma", f"must be >= 0, got {self.r1_gamma}")
        require(1 <= self.r1_every <= self.log_every, "r1_every",
                f"must be in [1, log_every], so every logged window has an R1 value; got {self.r1_every}")


@dataclass(frozen=True, kw_only=True)
class EvaluatorTrainParams(OptimParams):
    """evaluate.train: the digit classifier whose features score image rows (stage `evaluator`), Adam."""

    features: int  # width of its penultimate layer: the features FID, KID and precision/recall compare
    augment: bool  # random shifts of up to 2 pixels
