"""The one place params.yaml is read and validated.

`load_params()` turns params.yaml into frozen, typed dataclasses and rejects, with a one-line
message naming the key and what is allowed: unknown keys, missing keys, wrong types, values
out of range, unknown names (sampler, network, schedule, trajectory, ...). The file itself must
be UTF-8 YAML whose document is a mapping, with no key given twice (the message names the line).

Every number is finite and in its range; every integer fits in 64 bits and seeds lie in
[0, 2^63); sizes have upper bounds a run could meet (MAX_* below). Cell names become DVC stage
names and file names, so they match NAME: no shell, path or space characters.

The DAG's first stage, `validate` (`python -m pipelines.params params.yaml <stamp>`), runs this
before DVC deletes any other stage's outputs; every stage also calls it before any compute.
`python -m pipelines.params [params.yaml]` validates a file and exits 2 with one line on error.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from components.data import DATASETS
from components.registry import (
    CLASSIFIERS, DEVICES, DISCRIMINATORS, FEATURE_EXTRACTORS, GENERATORS, LR_SCHEDULES, NETWORKS, NO_DEFAULT,
    PRECISIONS, SAMPLERS, TIMESTEP_SAMPLERS, VARIANCES,
)
from components.schedules import SCHEDULES, TRAJECTORIES, make_schedule
from pipelines.errors import ParamsError

PARAMS_FILE = "params.yaml"
ANNOTATIONS = {"int": int, "float": float, "bool": bool, "str": str}  # network options' annotations, as source text
# The `validate` stage's output: constant, so it orders the DAG after validation without invalidating any stage.
STAMP_TEXT = "params.yaml passed pipelines.params validation"

# Trained models a sweep cell can sample from: the EMA weights of models/<name>.pt (dvc.yaml), written
# by train_ddpm, finetune_iddpm and train_sd2015. iddpm and sd2015 learn their variance; sd2015's kernel is
# tied to each step's beta_t (Sohl-Dickstein et al. 2015), so it runs its full chain only.
TRAINED_MODELS = ("ddpm", "iddpm", "sd2015")
LEARNED_VARIANCE_MODELS = ("iddpm", "sd2015")
FULL_CHAIN_MODELS = ("sd2015",)
FACTORS = ("delta", "gaussian")  # conditioning factors r(x) (Sohl-Dickstein et al. 2015 §2.5)
# Files a run reads from outside the repository (CIFAR-10's batches, Inception's weights) live here, so that DVC can
# list the folder as a dependency of the stages that read it in every profile: replacing a file reruns them.
EXTERNAL_DIR = "data/external"

# A name that reaches a stage name, a path or a command line (sweep cells).
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
INT64 = 2**63  # integers lie in [-2^63, 2^63); seeds in [0, 2^63), which numpy's and torch's generators all take
MAX_T = 100_000  # diffusion steps (DDPM 1000, iDDPM 4000); schedules are float64 tables of this length
MAX_POINTS = 10**8  # points in a data split or a cell's samples
MAX_BATCH = 10**6
MAX_STEPS = 10**9  # optimiser steps
MAX_WIDTH = 2**16  # any integer option of a network (widths, depths, embedding sizes)


def _choice(name: str, value: str, allowed, what: str) -> None:
    """Field `name` must be one of `allowed` (a registry)."""
    if value not in allowed:
        raise ParamsError(f"{name}: unknown {what} {value!r}; allowed: {', '.join(allowed)}")


def _require(ok: bool, name: str, message: str) -> None:
    """Field `name` must satisfy `ok`."""
    if not ok:
        raise ParamsError(f"{name}: {message}")


def _between(name: str, value: int | float, lo: int | float, hi: int | float) -> None:
    """Field `name` must lie in [lo, hi]."""
    _require(lo <= value <= hi, name, f"must be in [{lo:,}, {hi:,}], got {value:,}")


def _seed(name: str, value: int) -> None:
    _require(0 <= value < INT64, name, f"a seed must be in [0, 2^63), got {value}")


def _show(value: Any) -> str:
    """A value for an error message: its repr, on one line, at most 60 characters."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _key(k: Any) -> str:
    """A mapping key for an error message's key path: as written if it is a short printable string, else _show."""
    return k if isinstance(k, str) and k.isprintable() and 0 < len(k) <= 60 else _show(k)


def _external(name: str, path: str) -> None:
    """A file or folder a run reads from outside the repository: a relative path inside EXTERNAL_DIR."""
    parts = Path(path).parts
    _require(not Path(path).is_absolute() and ".." not in parts and len(parts) > 2
             and Path(*parts[:2]) == Path(EXTERNAL_DIR), name,
             f"must be a path inside {EXTERNAL_DIR}/ (a dependency of the stages that read it; put the file there or "
             f"link it, e.g. ln -s ~/datasets/cifar-10-batches-py {EXTERNAL_DIR}/), got {path!r}")


@dataclass(frozen=True)
class DataParams:
    """A data set by name and the options its registry entry reads (`DataSpec.options`)."""

    name: str  # data set, from components.data.DATASETS
    seed: int  # the train and reference splits are deterministic in this seed
    n_train: int
    n_reference: int
    std: float | None = None  # the 2-D toys: std of each mixture component (around the curve), data units
    path: str | None = None  # cifar10: the cifar-10-batches-py folder, inside data/external/
    hflip: bool = False  # images: DDPM's random horizontal flip of training minibatches (CIFAR-10)

    def __post_init__(self):
        _choice("name", self.name, DATASETS, "data set")
        spec = DATASETS[self.name]
        _seed("seed", self.seed)
        _between("n_train", self.n_train, 1, MAX_POINTS)
        _between("n_reference", self.n_reference, 1, MAX_POINTS)
        for key in ("std", "path"):
            needed = key in spec.options
            _require((getattr(self, key) is not None) == needed, key,
                     f"{'required' if needed else 'not an option'} for data set {self.name!r}"
                     + (f" (it reads {', '.join(spec.options)})" if spec.options else " (it reads no options)"))
        if self.std is not None:
            _require(0 < self.std <= 1e6, "std", f"must be in (0, 1e6] (float32 data), got {self.std}")
        if self.path is not None:
            _external("path", self.path)
        _require(not self.hflip or spec.decoder == "discretized", "hflip", "flips images only")

    def options(self) -> dict[str, Any]:
        """The keyword options its data set's builder takes."""
        return {key: getattr(self, key) for key in DATASETS[self.name].options}


@dataclass(frozen=True)
class RuntimeParams:
    """Where and how networks run: every stage that trains, samples or scores reads it."""

    device: str  # auto (the GPU the Prefect flow lent the stage, else the CPU) | cpu | cuda
    precision: str  # fp32 | bf16: autocast of the network's forward pass, fp32 weights, float64 schedule math
    channels_last: bool  # NHWC memory format for image networks (faster convolutions on GPUs)
    compile: bool  # torch.compile the network's forward pass (and for sampling, CUDA graphs on a GPU)
    deterministic: bool  # CUDA only: no TF32 and no cuDNN autotuning, for bitwise studies (the CPU always is)

    def __post_init__(self):
        _choice("device", self.device, DEVICES, "device")
        _choice("precision", self.precision, PRECISIONS, "precision")


@dataclass(frozen=True)
class DiffusionParams:
    schedule: str  # beta schedule, from components.schedules.SCHEDULES
    T: int  # number of diffusion steps the model is trained on

    def __post_init__(self):
        _choice("schedule", self.schedule, SCHEDULES, "schedule")
        _between("T", self.T, 2, MAX_T)


@dataclass(frozen=True)
class NetworkParams:
    """A network by name plus its constructor's keyword arguments (checked against its signature)."""

    registry: ClassVar[dict] = NETWORKS
    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ClassifierNetworkParams(NetworkParams):
    """A noise-aware classifier by name (components.networks.CLASSIFIERS) plus its keyword arguments."""

    registry: ClassVar[dict] = CLASSIFIERS


@dataclass(frozen=True)
class GeneratorNetworkParams(NetworkParams):
    """A DDGAN generator by name (components.networks.GENERATORS) plus its keyword arguments."""

    registry: ClassVar[dict] = GENERATORS


@dataclass(frozen=True)
class DiscriminatorNetworkParams(NetworkParams):
    """A DDGAN discriminator by name (components.networks.DISCRIMINATORS) plus its keyword arguments."""

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
        _seed("seed", self.seed)
        _between("steps", self.steps, 1, MAX_STEPS)
        _between("batch_size", self.batch_size, 1, MAX_BATCH)
        _require(self.lr > 0, "lr", "must be > 0")
        _choice("lr_schedule", self.lr_schedule, LR_SCHEDULES, "lr schedule")
        _require(0 <= self.warmup_steps <= self.steps, "warmup_steps", "must be in [0, steps]")
        _require(0 <= self.ema_decay < 1, "ema_decay", "must be in [0, 1)")
        _require(self.grad_clip >= 0, "grad_clip", "must be >= 0 (0 disables clipping)")
        _between("log_every", self.log_every, 1, MAX_STEPS)
        _between("checkpoint_every", self.checkpoint_every, 1, MAX_STEPS)
        # resuming at a log boundary keeps the loss curve identical to an unbroken run
        _require(self.checkpoint_every % self.log_every == 0, "checkpoint_every", "must be a multiple of log_every")


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
        _choice("timestep_sampler", self.timestep_sampler, TIMESTEP_SAMPLERS, "timestep sampler")
        _between("importance_history", self.importance_history, 1, 10_000)
        _require(0 < self.importance_uniform <= 1, "importance_uniform", "must be in (0, 1]")


@dataclass(frozen=True, kw_only=True)
class FinetuneParams(BoundOptimParams):
    """finetune_iddpm: the DDPM model plus a variance output, on L_hybrid (iDDPM §3.1)."""

    lambda_vlb: float  # L_hybrid = L_simple + lambda_vlb * L_vlb; iDDPM: 0.001

    def __post_init__(self):
        super().__post_init__()
        _require(self.lambda_vlb >= 0, "lambda_vlb", f"must be >= 0, got {self.lambda_vlb}")


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
        _require(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        _require(self.accuracy_buckets >= 1, "accuracy_buckets", "must be >= 1")


@dataclass(frozen=True)
class DDGANParams:
    T: list[int]  # one trained generator (train_ddgan@T) and one table row (ddgan-T) per entry; [] for none

    def __post_init__(self):
        _require(all(1 <= T <= MAX_T for T in self.T), "T", f"every entry must be in [1, {MAX_T:,}], got {self.T}")
        _require(len(set(self.T)) == len(self.T), "T", f"entries must be distinct, got {self.T}")

    def cells(self) -> dict[str, "GANCellParams"]:
        """The table rows: ddgan-<T>, T denoising steps of the generator trained with T."""
        return {f"ddgan-{T}": self.cell(T) for T in self.T}

    @staticmethod
    def cell(T: int) -> "GANCellParams":
        """Row ddgan-<T>, from T alone: stage sample_ddgan@<T> reads no other entry of ddgan.T."""
        return GANCellParams(model=f"ddgan-{T}", steps=T)


@dataclass(frozen=True, kw_only=True)
class DDGANTrainParams(OptimParams):
    """train_ddgan: G and D of a Denoising Diffusion GAN on T steps of `schedule` (Xiao et al. 2022).

    `lr` is the generator's, `lr_d` the discriminator's; both follow `lr_schedule`. The EMA is
    G's (sampling uses it); grad_clip (0: off) applies to both networks.
    """

    schedule: str  # beta schedule over T steps, from components.schedules.SCHEDULES (DDGAN: ddgan_vp)
    lr_d: float
    adam_betas: list[float]  # Adam's (beta1, beta2) for both networks (DDGAN: 0.5, 0.9)
    r1_gamma: float  # R1 weight: D's loss adds r1_gamma / 2 * E||grad D(real)||^2
    r1_every: int  # lazy R1: the penalty on every r1_every-th D step (DDGAN: 15)
    generator: GeneratorNetworkParams
    discriminator: DiscriminatorNetworkParams

    def __post_init__(self):
        super().__post_init__()
        _choice("schedule", self.schedule, SCHEDULES, "schedule")
        _require(self.lr_d > 0, "lr_d", "must be > 0")
        _require(len(self.adam_betas) == 2 and all(0 <= b < 1 for b in self.adam_betas), "adam_betas",
                 f"must be two numbers in [0, 1), got {self.adam_betas}")
        _require(self.r1_gamma >= 0, "r1_gamma", f"must be >= 0, got {self.r1_gamma}")
        _require(1 <= self.r1_every <= self.log_every, "r1_every",
                 f"must be in [1, log_every], so every logged window has an R1 value; got {self.r1_every}")


@dataclass(frozen=True)
class GuidanceParams:
    label_seed: int  # target labels y ~ U{0..K-1}, one per sample, the same in every guided cell

    def __post_init__(self):
        _seed("label_seed", self.label_seed)


@dataclass(frozen=True)
class SampleParams:
    n: int  # samples per cell
    seed: int  # the same seed for every cell: cells differ only in the sampler
    batch_size: int

    def __post_init__(self):
        _between("n", self.n, 1, MAX_POINTS)
        _seed("seed", self.seed)
        _between("batch_size", self.batch_size, 1, MAX_BATCH)


@dataclass(frozen=True)
class TimingParams:
    """How a cell's speed is measured: apart from its samples, over short repeats, in a fixed number of threads."""

    repeats: int  # timed draws; the table gives their median and interquartile range
    n: int  # samples per timed draw (one batch)
    warmup: int  # untimed draws first: allocations and kernel choice stay out of the timing
    threads: int  # torch CPU threads while timing (0: torch's default); 1 keeps a busy machine from skewing it

    def __post_init__(self):
        _between("repeats", self.repeats, 1, 1000)
        _between("n", self.n, 1, MAX_BATCH)
        _between("warmup", self.warmup, 0, 1000)
        _between("threads", self.threads, 0, 4096)


@dataclass(frozen=True)
class NllParams:
    n: int  # reference points the bound is averaged over (the first n of the held-out split)
    seed: int  # x_t draws; the same for every cell, so bounds differ only by the model (common random numbers)
    batch_size: int

    def __post_init__(self):
        _between("n", self.n, 1, MAX_POINTS)
        _seed("seed", self.seed)
        _between("batch_size", self.batch_size, 1, MAX_BATCH)


@dataclass(frozen=True, kw_only=True)
class ConditionParams:
    """A factor r(x) that cells multiply into their model, p~(x) ∝ p(x) r(x) (Sohl-Dickstein et al. 2015 §2.5), in
    data units: a delta on one coordinate (inpainting: it is clamped, the rest sampled) or a Gaussian bump."""

    factor: str  # delta | gaussian
    coordinate: int | None = None  # delta: the known coordinate (index into the flattened sample)
    value: float | None = None  # delta: its value
    center: list[float] | None = None  # gaussian: the bump's centre, one number per coordinate
    std: float | None = None  # gaussian: its standard deviation

    def __post_init__(self):
        _choice("factor", self.factor, FACTORS, "factor")
        needs = {"delta": ("coordinate", "value"), "gaussian": ("center", "std")}[self.factor]
        for key in ("coordinate", "value", "center", "std"):
            given = getattr(self, key) is not None
            _require(given == (key in needs), key, f"{'required' if key in needs else 'not an option'} for factor "
                     f"{self.factor!r} (it takes {' and '.join(needs)})")
        if self.factor == "delta":
            _between("coordinate", self.coordinate, 0, MAX_WIDTH)
        else:
            _require(self.std > 0, "std", f"must be > 0, got {self.std}")

    def describe(self) -> str:
        """The factor in a few characters, for the table: `x[0] = 0` or `N([2, 2], 1^2)`."""
        if self.factor == "delta":
            return f"x[{self.coordinate}] = {self.value:g}"
        return f"N([{', '.join(f'{c:g}' for c in self.center)}], {self.std:g}^2)"


@dataclass(frozen=True, kw_only=True)
class CellParams:
    """One cell of `exact_sweep`: a sampler and its step count, with the sampler's own options."""

    sampler: str
    steps: int
    trajectory: str = "uniform"
    eta: float | None = None  # ddim only (DDIM eq. 16); defaults to 0
    variance: str | None = None  # ddpm only: small (beta-tilde) | large (beta) | learned (iDDPM); defaults to small
    clip_x0: bool = False  # clip x0-hat to [-1, 1] (model space); off for the toy
    scale: float | None = None  # classifier-guidance scale s (ADM Alg. 1/2); None: unguided
    condition: ConditionParams | None = None  # a factor r(x): samples p(x) r(x) (Sohl-Dickstein et al. 2015 §2.5)
    n: int | None = None  # samples of this cell, if not sample.n (a slow cell on images: say so in its name)

    def __post_init__(self):
        _choice("sampler", self.sampler, SAMPLERS, "sampler")
        if self.n is not None:
            _between("n", self.n, 1, MAX_POINTS)
        _choice("trajectory", self.trajectory, TRAJECTORIES, "trajectory")
        _between("steps", self.steps, 1, MAX_T)
        _require(self.scale is None or self.scale >= 0, "scale", f"must be >= 0, got {self.scale}")
        if self.sampler == "ddim":
            _require(self.variance is None, "variance", "applies to sampler ddpm only")
            # DDIM eq. 16: above 1, sigma_t^2 can exceed 1 - abar_{t-1} and the direction term's root is of a negative
            _require(self.eta is None or 0 <= self.eta <= 1, "eta", f"must be in [0, 1], got {self.eta}")
        else:
            _require(self.eta is None, "eta", "applies to sampler ddim only")
            if self.variance is not None:
                _choice("variance", self.variance, VARIANCES, "variance")

    def sampler_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for the sampler function beyond model, schedule, x_T and generator."""
        extra = {"eta": self.eta or 0.0} if self.sampler == "ddim" else {"variance": self.variance or "small"}
        return {"clip_x0": self.clip_x0, **extra}

    @property
    def has_likelihood(self) -> bool:
        """Unguided, unconditioned ancestral (DDPM) chains are latent-variable models of p(x) with a variational bound
        (DDPM eq. 5)."""
        return self.sampler == "ddpm" and self.scale is None and self.condition is None


@dataclass(frozen=True, kw_only=True)
class SweepCellParams(CellParams):
    """One cell of `sweep`: a sampler run on a trained model's EMA weights."""

    model: str  # ddpm | iddpm: models/<model>.pt

    def __post_init__(self):
        _choice("model", self.model, TRAINED_MODELS, "model")
        super().__post_init__()


@dataclass(frozen=True, kw_only=True)
class GuidedCellParams(SweepCellParams):
    """One cell of `guided_sweep`: a sweep cell guided by the trained classifier at scale s."""

    scale: float = field()  # required here (no default); 0 reproduces the unguided cell exactly


@dataclass(frozen=True, kw_only=True)
class GANCellParams(CellParams):
    """A DDGAN table row (sample_ddgan@T): `steps` = T denoising steps of models/<model>.pt's EMA generator,
    with fresh z at each step; no sampler options."""

    model: str
    sampler: str = "ddgan"

    def __post_init__(self):
        _between("steps", self.steps, 1, MAX_T)

    def sampler_kwargs(self) -> dict[str, Any]:
        return {}


@dataclass(frozen=True, kw_only=True)
class EvaluatorTrainParams(OptimParams):
    """evaluate.train: the digit classifier whose features score image rows (stage `evaluator`), Adam."""

    features: int  # width of its penultimate layer: the features FID, KID and precision/recall compare
    augment: bool  # random shifts of up to 2 pixels


@dataclass(frozen=True)
class EvaluateParams:
    features: str  # feature extractor: identity (points) | lenet (digits, trained by stage evaluator) | inception
    k: int  # precision/recall neighbourhood (Kynkaanniemi et al.: 3)
    n_std: float  # a sample is high quality within n_std * mode std of its nearest mode
    min_mode_count: int  # a mode is covered when it holds this many high-quality samples
    weights: str | None = None  # inception: torch-fidelity's Inception weights file, inside data/external/
    train: EvaluatorTrainParams | None = None  # lenet: how stage evaluator trains it
    kid_subsets: int = 100  # KID (Binkowski et al. 2018): the mean over this many random subsets
    kid_subset_size: int = 1000  # of this many samples each (fewer when a set is smaller)
    # the split FID, KID and precision/recall compare against: test, the held-out reference split (CIFAR-10's test
    # batch), or train, the train split (DDPM's CIFAR-10 FID 3.17 is against the training set, 5.24 against the test)
    reference: str = "test"

    def __post_init__(self):
        _choice("features", self.features, FEATURE_EXTRACTORS, "feature extractor")
        _choice("reference", self.reference, ("test", "train"), "reference split")
        _between("k", self.k, 1, 1000)
        _require(self.n_std > 0, "n_std", "must be > 0")
        _between("min_mode_count", self.min_mode_count, 1, MAX_POINTS)
        _require((self.weights is not None) == (self.features == "inception"), "weights",
                 "required for features inception (a local file: nothing is downloaded)" if self.weights is None
                 else f"not an option for features {self.features!r} (inception only)")
        if self.weights is not None:
            _external("weights", self.weights)
        _require((self.train is not None) == (self.features == "lenet"), "train",
                 "required for features lenet (stage evaluator trains it)" if self.train is None
                 else f"not an option for features {self.features!r} (lenet only)")
        _between("kid_subsets", self.kid_subsets, 1, 100_000)
        _between("kid_subset_size", self.kid_subset_size, 2, MAX_POINTS)


@dataclass(frozen=True)
class Params:
    data: DataParams
    diffusion: DiffusionParams
    train_ddpm: TrainParams
    finetune_iddpm: FinetuneParams
    train_sd2015: SD2015Params
    train_classifier: ClassifierParams
    ddgan: DDGANParams
    train_ddgan: DDGANTrainParams
    sample: SampleParams
    timing: TimingParams
    nll: NllParams
    guidance: GuidanceParams
    sweep: dict[str, SweepCellParams]
    guided_sweep: dict[str, GuidedCellParams]
    exact_sweep: dict[str, CellParams]
    evaluate: EvaluateParams
    runtime: RuntimeParams

    def cells(self) -> dict[str, CellParams]:
        """Every sampler cell of the main data set in table order: trained, DDGAN, guided, exact."""
        return {**self.sweep, **self.ddgan.cells(), **self.guided_sweep, **self.exact_sweep}

    def cell(self, section: str, name: str | None) -> tuple[str, CellParams]:
        """Cell `name` of sweep `section` (sweep, guided_sweep, exact_sweep) with its params; ParamsError naming the
        cell where there is no such cell."""
        cells = getattr(self, section)
        if name not in cells:
            raise ParamsError(f"params.yaml: {section}.{name}: no such cell; allowed: {', '.join(cells) or 'none'}")
        return name, cells[name]


# --- the converter ----------------------------------------------------------------------

_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "a mapping"}


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp` and build dataclasses; errors name `key`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):  # `float | None`: optional cell options
        if value is None and type(None) in args:
            return None
        (tp,) = [a for a in args if a is not type(None)]
        return _convert(value, tp, key)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if origin is list:
        if not isinstance(value, list):
            raise ParamsError(f"{key}: expected a list, got {_show(value)}")
        return [_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:  # the sweeps: name -> cell
        if not isinstance(value, dict):
            raise ParamsError(f"{key}: expected a mapping, got {_show(value)}")
        for k in value:
            if not isinstance(k, str) or not NAME.fullmatch(k):
                hint = "; write 0.5 as 0_5, for example" if isinstance(k, str) and re.search(r"\d\.\d", k) else ""
                raise ParamsError(f"{key}: cell name {_show(k)} is not allowed: use 1 to 64 letters, digits, '_' or '-', "
                                  f"starting with a letter or digit (it becomes a stage name and a file name){hint}")
        return {k: _convert(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp in (int, float) and isinstance(value, int) and not isinstance(value, bool):
        _require(-INT64 <= value < INT64, key, f"{_show(value)} does not fit in 64 bits")
        return float(value) if tp is float else value
    if not isinstance(value, tp) or (isinstance(value, bool) and tp is not bool):
        raise ParamsError(f"{key}: expected {_TYPE_NAMES.get(tp, tp.__name__)}, got {_show(value)}")
    if tp is float:
        _require(math.isfinite(value), key, f"must be a finite number, got {value}")
    return value


def _build(cls: type, raw: Any, key: str) -> Any:
    """Build dataclass `cls` from the mapping `raw`, rejecting unknown and missing keys."""
    if issubclass(cls, NetworkParams):
        return _build_network(cls, raw, key)
    if not isinstance(raw, dict):
        raise ParamsError(f"{key}: expected a mapping, got {_show(raw)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = [k for k in raw if k not in fields]
    if unknown:
        raise ParamsError(f"{key}.{_key(unknown[0])}: unknown key; allowed: {', '.join(fields)}")
    missing = [n for n, f in fields.items() if n not in raw and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ParamsError(f"{key}.{missing[0]}: missing key")
    values = {n: _convert(v, hints[n], f"{key}.{n}") for n, v in raw.items()}
    try:
        return cls(**values)
    except ParamsError as e:
        raise ParamsError(f"{key}.{e}") from None


def _build_network(cls: type[NetworkParams], raw: Any, key: str) -> NetworkParams:
    """A network section: `name` from cls.registry, other keys typed by the constructor's signature."""
    registry = cls.registry
    if not isinstance(raw, dict) or "name" not in raw:
        raise ParamsError(f"{key}.name: missing key; allowed networks: {', '.join(registry)}")
    raw = dict(raw)
    name = raw.pop("name")
    if not isinstance(name, str) or name not in registry:
        raise ParamsError(f"{key}.name: unknown network {_show(name)}; allowed: {', '.join(registry)}")
    options = registry.parameters(name)  # read from the network's source: no torch import
    # set by the stage, not by params: the data's shape, the variance head, the data's classes
    allowed = [p for p in options if p not in ("data_shape", "out_mult", "n_classes")]
    kwargs = {}
    for k, v in raw.items():
        if k not in allowed:
            raise ParamsError(f"{key}.{_key(k)}: unknown key for network {name!r}; allowed: name, "
                              f"{', '.join(allowed)}")
        annotation, default = options[k]
        kwargs[k] = _convert(v, ANNOTATIONS.get(annotation, Any), f"{key}.{k}")
        off = default is not NO_DEFAULT and default == 0  # an option whose default is 0 is off at 0, e.g. fourier_octaves
        if isinstance(kwargs[k], int) and not isinstance(kwargs[k], bool):
            _between(f"{key}.{k}", kwargs[k], 0 if off else 1, MAX_WIDTH)
    return cls(name, kwargs)


def _cross_checks(p: Params) -> None:
    """Constraints between sections."""
    _run_checks(p)
    eps = [name for name, cell in p.cells().items() if getattr(cell, "model", None) not in FULL_CHAIN_MODELS]
    if eps and make_schedule(p.diffusion.schedule, p.diffusion.T).alphas_cumprod[-1] <= 0:
        raise ParamsError(f"diffusion.schedule: {p.diffusion.schedule!r} ends at abar_T = 0, where an eps model "
                          f"cannot recover x0 (cell {eps[0]}); it is for Sohl-Dickstein et al. 2015's model alone "
                          f"(model {', '.join(FULL_CHAIN_MODELS)}: profiles/swissroll.yaml)")


def _run_checks(p: Params) -> None:
    """Constraints between the sections one run's stages read."""
    if p.exact_sweep and not DATASETS[p.data.name].mixture:
        raise ParamsError(f"exact_sweep: the exact eps* needs a Gaussian-mixture data set; allowed with data.name: "
                          f"{', '.join(name for name, spec in DATASETS.items() if spec.mixture)}")
    if p.nll.n > p.data.n_reference:
        raise ParamsError(f"nll.n: {p.nll.n} exceeds data.n_reference = {p.data.n_reference}")
    # precision/recall (k-NN radii) need more than k points in the reference split and in every scored set
    if p.evaluate.k >= min(p.sample.n, p.data.n_reference):
        raise ParamsError(f"evaluate.k: {p.evaluate.k} must be below sample.n = {p.sample.n} and data.n_reference = "
                          f"{p.data.n_reference}")
    if p.evaluate.reference == "train" and p.evaluate.k >= p.data.n_train:
        raise ParamsError(f"evaluate.k: {p.evaluate.k} must be below data.n_train = {p.data.n_train} (the reference "
                          f"set of evaluate.reference: train)")
    spec = DATASETS[p.data.name]
    images = spec.decoder == "discretized"
    wants = {"identity": not images, "lenet": images and spec.shape[1:] == (28, 28),
             "inception": images and spec.shape[0] == 3}
    if not wants[p.evaluate.features]:
        fits = [name for name, ok in wants.items() if ok]
        raise ParamsError(f"evaluate.features: {p.evaluate.features!r} does not score {p.data.name} "
                          f"{spec.shape}; allowed: {', '.join(fits)}")
    if p.train_classifier.accuracy_buckets > p.diffusion.T:
        raise ParamsError(f"train_classifier.accuracy_buckets: {p.train_classifier.accuracy_buckets} exceeds "
                          f"diffusion.T = {p.diffusion.T}")
    for T in p.ddgan.T:
        try:
            make_schedule(p.train_ddgan.schedule, T)
        except ValueError as e:
            raise ParamsError(f"train_ddgan.schedule: {p.train_ddgan.schedule!r} over ddgan.T = {T} steps: {e}") from None
    seen: dict[str, str] = {name: "ddgan" for name in p.ddgan.cells()}
    for section, cells in (("sweep", p.sweep), ("guided_sweep", p.guided_sweep), ("exact_sweep", p.exact_sweep)):
        for name, cell in cells.items():
            key = f"{section}.{name}"
            if name in seen:
                raise ParamsError(f"{key}: the name is also a {seen[name]} cell; cell names must be unique")
            seen[name] = section
            if section == "sweep" and cell.scale is not None:
                raise ParamsError(f"{key}.scale: a guided cell reads the classifier; allowed in guided_sweep "
                                  f"(trained classifier) and exact_sweep (exact p(y | x_t))")
            model = getattr(cell, "model", None)
            if cell.variance == "learned" and model not in LEARNED_VARIANCE_MODELS:
                raise ParamsError(f"{key}.variance: 'learned' needs a model with a variance output; allowed: "
                                  f"model {', '.join(LEARNED_VARIANCE_MODELS)}")
            if model in FULL_CHAIN_MODELS and (cell.sampler, cell.steps, cell.variance, cell.clip_x0) != (
                    "ddpm", p.diffusion.T, "learned", False):
                raise ParamsError(f"{key}: model {model} samples its own kernel on every step of its chain: it needs "
                                  f"sampler ddpm, steps {p.diffusion.T} (diffusion.T), variance learned, no clip_x0")
            c = cell.condition
            if c is not None and cell.scale is not None:
                raise ParamsError(f"{key}.condition: a cell multiplies in one factor: a condition or a guidance scale")
            dims = math.prod(DATASETS[p.data.name].shape)
            if c is not None and c.coordinate is not None and c.coordinate >= dims:
                raise ParamsError(f"{key}.condition.coordinate: {c.coordinate} is out of range for {p.data.name}'s "
                                  f"{dims} coordinates")
            if c is not None and c.center is not None and len(c.center) != dims:
                raise ParamsError(f"{key}.condition.center: {len(c.center)} numbers, expected one per coordinate "
                                  f"({dims})")
            if cell.n is not None and p.evaluate.k >= cell.n:
                raise ParamsError(f"{key}.n: {cell.n} samples; precision/recall need more than evaluate.k = "
                                  f"{p.evaluate.k}")
            if cell.steps > p.diffusion.T:
                raise ParamsError(f"{key}.steps: {cell.steps} exceeds diffusion.T = {p.diffusion.T}; allowed: 1..{p.diffusion.T}")
            try:
                TRAJECTORIES[cell.trajectory](p.diffusion.T, cell.steps)
            except ValueError as e:
                raise ParamsError(f"{key}.trajectory: {e}") from None


def parse_params(raw: Any, source: str = PARAMS_FILE) -> Params:
    """Validate a parsed params mapping; raise ParamsError with a one-line message naming the key."""
    if not isinstance(raw, dict):
        kind = "an empty document" if raw is None else f"a {type(raw).__name__}"
        raise ParamsError(f"{source}: expected a mapping of sections ({', '.join(f.name for f in dataclasses.fields(Params))}), "
                          f"got {kind}")
    try:
        params = _build(Params, raw, "")
        _cross_checks(params)
    except ParamsError as e:
        raise ParamsError(f"{source}: {str(e).lstrip('.')}") from None
    return params


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, but a key given twice in one mapping is an error (PyYAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                line = first.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:  # an unhashable key: SafeLoader reports it
                continue
            if line != key_node.start_mark.line + 1:
                raise ParamsError(f"line {key_node.start_mark.line + 1}: duplicate key {_show(key)} (first given at line {line})")
        return super().construct_mapping(node, deep)


def read_yaml(path: str | Path) -> Any:
    """The YAML document of a UTF-8 file; ParamsError naming the file (and the line) for a missing file, bytes that
    are not UTF-8, YAML syntax errors and duplicate keys."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found") from None
    except OSError as e:
        raise ParamsError(f"{path}: cannot read ({e.strerror})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ParamsError(f"{path}: line {line}: not UTF-8 (byte 0x{data[e.start]:02x})") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except ParamsError as e:
        raise ParamsError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        what = getattr(e, "problem", None) or (str(e).splitlines() or ["syntax error"])[0]
        raise ParamsError(f"{path}: {where}not valid YAML ({what})") from None


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    """Read and validate params.yaml."""
    return parse_params(read_yaml(path), str(path))


def check_environment(p: Params, external: str | Path = EXTERNAL_DIR) -> None:
    """What params name outside the repository is there: the files in `external` (the workspace's EXTERNAL_DIR)
    and, for runtime.device cuda, a GPU. ParamsError naming the key otherwise, so a run without them stops before
    any compute (the validate stage, and a profile's workspace, call this). The stages that read the files check
    their contents."""
    if p.runtime.device == "cuda":
        import torch  # here only: parsing params never loads torch

        if not torch.cuda.is_available():
            raise ParamsError(f"runtime.device: 'cuda', but torch {torch.__version__} sees no GPU on this machine "
                              "(torch.cuda.is_available() is False); use auto (the GPU where there is one) or cpu")
    for key, path, kind in (("data.path", p.data.path, "folder"), ("evaluate.weights", p.evaluate.weights, "file")):
        where = None if path is None else Path(external, Path(path).relative_to(EXTERNAL_DIR))
        if where is not None and not (where.is_dir() if kind == "folder" else where.is_file()):
            what = {"data.path": "CIFAR-10's python batches (cifar-10-batches-py)",
                    "evaluate.weights": "torch-fidelity's Inception weights"}[key]
            raise ParamsError(f"{key}: no {kind} {path}: nothing is downloaded; put {what} there, or link it "
                              f"({EXTERNAL_DIR}/README.md)")


def main(argv: list[str] | None = None) -> int:
    """`python -m pipelines.params [params.yaml [stamp]] [--claims claims.yaml]`: validate params (and the claims
    file, which the validate stage and `make repro` check before any compute); as the DAG's `validate` stage, also
    write `stamp`. With no arguments: params.yaml, and claims.yaml if there is one.

    The stamp's bytes never change, so the stages after `validate` rerun only for their own
    params: `validate` orders them after itself without ever invalidating them.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    claims = "claims.yaml" if not argv and Path("claims.yaml").is_file() else None
    if "--claims" in argv[:-1]:
        i = argv.index("--claims")
        claims = argv.pop(i + 1)
        argv.pop(i)
    if len(argv) > 2 or any(a.startswith("--") for a in argv):
        print("usage: python -m pipelines.params [params.yaml [stamp]] [--claims claims.yaml]", file=sys.stderr)
        return 2
    path = argv[0] if argv else PARAMS_FILE
    # run as __main__, this module's ParamsError is not the class pipelines.claims imports: catch both
    from pipelines.claims import ClaimsError, load_claims

    try:
        check_environment(load_params(path))
        if claims is not None:
            load_claims(claims)
    except (ParamsError, ClaimsError) as e:
        from pipelines.restore import restore_after_failure

        restore_after_failure()  # as the validate stage: the stamp DVC deleted goes back
        print(f"error: {e}", file=sys.stderr)
        return 2
    if len(argv) == 2:
        stamp = Path(argv[1])
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(f"{STAMP_TEXT}\n")
    print(f"{path}: ok" + (f"; {claims}: ok" if claims else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
