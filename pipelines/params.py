"""The one place params.yaml is read and validated.

`load_params()` turns params.yaml into frozen, typed dataclasses and rejects, with a one-line
message naming the key and what is allowed: unknown keys, missing keys, wrong types, values
out of range, unknown names (sampler, network, schedule, trajectory, ...). Every stage calls it
before any compute, so a bad value fails fast and touches no output.

`python -m pipelines.params [params.yaml]` validates a file and exits non-zero on error.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from components.data import DATASETS, MIXTURES
from components.diffusion import VARIANCES
from components.features import FEATURE_EXTRACTORS
from components.networks import CLASSIFIERS, DISCRIMINATORS, GENERATORS, NETWORKS
from components.samplers import SAMPLERS
from components.schedules import SCHEDULES, TRAJECTORIES, make_schedule
from components.training import LR_SCHEDULES, TIMESTEP_SAMPLERS

PARAMS_FILE = "params.yaml"

# Trained models a sweep cell can sample from: the EMA weights of models/<name>.pt (dvc.yaml), written
# by train_ddpm and finetune_iddpm. Only iddpm has a variance output.
TRAINED_MODELS = ("ddpm", "iddpm")
LEARNED_VARIANCE_MODELS = ("iddpm",)


class ParamsError(ValueError):
    """A params.yaml value that cannot be used; the message names the key."""


def _choice(name: str, value: str, allowed, what: str) -> None:
    """Field `name` must be one of `allowed` (a registry)."""
    if value not in allowed:
        raise ParamsError(f"{name}: unknown {what} {value!r}; allowed: {', '.join(allowed)}")


def _require(ok: bool, name: str, message: str) -> None:
    """Field `name` must satisfy `ok`."""
    if not ok:
        raise ParamsError(f"{name}: {message}")


@dataclass(frozen=True)
class DataParams:
    name: str  # data set, from components.data.DATASETS
    seed: int  # the train and reference splits are deterministic in this seed
    n_train: int
    n_reference: int
    std: float  # std of each mixture component, data units

    def __post_init__(self):
        _choice("name", self.name, DATASETS, "data set")
        _require(self.n_train > 0, "n_train", "must be > 0")
        _require(self.n_reference > 0, "n_reference", "must be > 0")
        _require(self.std > 0, "std", "must be > 0")


@dataclass(frozen=True)
class DiffusionParams:
    schedule: str  # beta schedule, from components.schedules.SCHEDULES
    T: int  # number of diffusion steps the model is trained on

    def __post_init__(self):
        _choice("schedule", self.schedule, SCHEDULES, "schedule")
        _require(self.T >= 2, "T", f"must be >= 2, got {self.T}")


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
        _require(self.steps > 0, "steps", f"must be > 0, got {self.steps}")
        _require(self.batch_size > 0, "batch_size", "must be > 0")
        _require(self.lr > 0, "lr", "must be > 0")
        _choice("lr_schedule", self.lr_schedule, LR_SCHEDULES, "lr schedule")
        _require(0 <= self.warmup_steps <= self.steps, "warmup_steps", "must be in [0, steps]")
        _require(0 <= self.ema_decay < 1, "ema_decay", "must be in [0, 1)")
        _require(self.grad_clip >= 0, "grad_clip", "must be >= 0 (0 disables clipping)")
        _require(self.log_every > 0, "log_every", "must be > 0")
        _require(self.checkpoint_every > 0, "checkpoint_every", "must be > 0")
        # resuming at a log boundary keeps the loss curve identical to an unbroken run
        _require(self.checkpoint_every % self.log_every == 0, "checkpoint_every", "must be a multiple of log_every")


@dataclass(frozen=True, kw_only=True)
class TrainParams(OptimParams):
    """train_ddpm: a network from scratch on L_simple."""

    network: NetworkParams


@dataclass(frozen=True, kw_only=True)
class FinetuneParams(OptimParams):
    """finetune_iddpm: the DDPM model plus a variance output, on L_hybrid (iDDPM §3.1)."""

    lambda_vlb: float  # L_hybrid = L_simple + lambda_vlb * L_vlb; iDDPM: 0.001
    timestep_sampler: str  # uniform | loss_second_moment (iDDPM §3.3 importance sampling)
    importance_history: int  # losses kept per t (iDDPM: 10)
    importance_uniform: float  # share of uniform mixed into p_t (iDDPM: 0.001)

    def __post_init__(self):
        super().__post_init__()
        _require(self.lambda_vlb >= 0, "lambda_vlb", f"must be >= 0, got {self.lambda_vlb}")
        _choice("timestep_sampler", self.timestep_sampler, TIMESTEP_SAMPLERS, "timestep sampler")
        _require(self.importance_history >= 1, "importance_history", "must be >= 1")
        _require(0 < self.importance_uniform <= 1, "importance_uniform", "must be in (0, 1]")


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
    T: list[int]  # one trained generator (train_ddgan@T) and one table row (ddgan-T) per entry

    def __post_init__(self):
        _require(len(self.T) > 0, "T", "must list at least one number of denoising steps")
        _require(all(T >= 1 for T in self.T), "T", f"every entry must be >= 1, got {self.T}")
        _require(len(set(self.T)) == len(self.T), "T", f"entries must be distinct, got {self.T}")

    def cells(self) -> dict[str, "GANCellParams"]:
        """The table rows: ddgan-<T>, T denoising steps of the generator trained with T."""
        return {f"ddgan-{T}": GANCellParams(model=f"ddgan-{T}", steps=T) for T in self.T}


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


@dataclass(frozen=True)
class SampleParams:
    n: int  # samples per cell
    seed: int  # the same seed for every cell: cells differ only in the sampler
    batch_size: int
    warmup: int  # samples in the untimed warm-up batch

    def __post_init__(self):
        _require(self.n > 0, "n", "must be > 0")
        _require(self.batch_size > 0, "batch_size", "must be > 0")
        _require(self.warmup >= 0, "warmup", "must be >= 0")


@dataclass(frozen=True)
class NllParams:
    n: int  # reference points the bound is averaged over (the first n of the held-out split)
    seed: int  # x_t draws; the same for every cell, so bounds differ only by the model (common random numbers)
    batch_size: int

    def __post_init__(self):
        _require(self.n > 0, "n", "must be > 0")
        _require(self.batch_size > 0, "batch_size", "must be > 0")


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

    def __post_init__(self):
        _choice("sampler", self.sampler, SAMPLERS, "sampler")
        _choice("trajectory", self.trajectory, TRAJECTORIES, "trajectory")
        _require(self.steps > 0, "steps", f"must be > 0, got {self.steps}")
        _require(self.scale is None or self.scale >= 0, "scale", f"must be >= 0, got {self.scale}")
        if self.sampler == "ddim":
            _require(self.variance is None, "variance", "applies to sampler ddpm only")
            _require(self.eta is None or self.eta >= 0, "eta", f"must be >= 0, got {self.eta}")
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
        """Unguided ancestral (DDPM) chains are latent-variable models of p(x) with a variational bound (DDPM eq. 5)."""
        return self.sampler == "ddpm" and self.scale is None


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
        _require(self.steps > 0, "steps", f"must be > 0, got {self.steps}")

    def sampler_kwargs(self) -> dict[str, Any]:
        return {}


@dataclass(frozen=True)
class EvaluateParams:
    features: str  # feature extractor for FID / precision / recall
    k: int  # precision/recall neighbourhood (Kynkaanniemi et al.: 3)
    n_std: float  # a sample is high quality within n_std * mode std of its nearest mode
    min_mode_count: int  # a mode is covered when it holds this many high-quality samples

    def __post_init__(self):
        _choice("features", self.features, FEATURE_EXTRACTORS, "feature extractor")
        _require(self.k >= 1, "k", "must be >= 1")
        _require(self.n_std > 0, "n_std", "must be > 0")
        _require(self.min_mode_count >= 1, "min_mode_count", "must be >= 1")


@dataclass(frozen=True)
class Params:
    data: DataParams
    diffusion: DiffusionParams
    train_ddpm: TrainParams
    finetune_iddpm: FinetuneParams
    train_classifier: ClassifierParams
    ddgan: DDGANParams
    train_ddgan: DDGANTrainParams
    sample: SampleParams
    nll: NllParams
    guidance: GuidanceParams
    sweep: dict[str, SweepCellParams]
    guided_sweep: dict[str, GuidedCellParams]
    exact_sweep: dict[str, CellParams]
    evaluate: EvaluateParams

    def cells(self) -> dict[str, CellParams]:
        """Every sampler cell in table order: trained, DDGAN, guided, exact."""
        return {**self.sweep, **self.ddgan.cells(), **self.guided_sweep, **self.exact_sweep}


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
            raise ParamsError(f"{key}: expected a list, got {value!r}")
        return [_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ParamsError(f"{key}: expected a mapping, got {value!r}")
        return {k: _convert(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    ok = isinstance(value, tp) and not (tp in (int, float) and isinstance(value, bool))
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not ok:
        raise ParamsError(f"{key}: expected {_TYPE_NAMES.get(tp, tp.__name__)}, got {value!r}")
    return value


def _build(cls: type, raw: Any, key: str) -> Any:
    """Build dataclass `cls` from the mapping `raw`, rejecting unknown and missing keys."""
    if issubclass(cls, NetworkParams):
        return _build_network(cls, raw, key)
    if not isinstance(raw, dict):
        raise ParamsError(f"{key}: expected a mapping, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ParamsError(f"{key}.{unknown[0]}: unknown key; allowed: {', '.join(fields)}")
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
    if name not in registry:
        raise ParamsError(f"{key}.name: unknown network {name!r}; allowed: {', '.join(registry)}")
    sig = inspect.signature(registry[name])
    hints = typing.get_type_hints(registry[name].__init__)
    # set by the stage, not by params: the data's shape, the variance head, the data's classes
    allowed = [p for p in sig.parameters if p not in ("data_shape", "out_mult", "n_classes")]
    kwargs = {}
    for k, v in raw.items():
        if k not in allowed:
            raise ParamsError(f"{key}.{k}: unknown key for network {name!r}; allowed: name, {', '.join(allowed)}")
        kwargs[k] = _convert(v, hints.get(k, Any), f"{key}.{k}")
        off = sig.parameters[k].default == 0  # an option whose default is 0 is off at 0, e.g. fourier_octaves
        if isinstance(kwargs[k], int) and (kwargs[k] < 0 if off else kwargs[k] <= 0):
            raise ParamsError(f"{key}.{k}: must be {'>= 0' if off else '> 0'}, got {v}")
    return cls(name, kwargs)


def _cross_checks(p: Params) -> None:
    """Constraints between sections."""
    if p.exact_sweep and p.data.name not in MIXTURES:
        raise ParamsError(f"exact_sweep: the exact eps* needs a Gaussian-mixture data set; allowed with data.name: "
                          f"{', '.join(MIXTURES)}")
    if p.nll.n > p.data.n_reference:
        raise ParamsError(f"nll.n: {p.nll.n} exceeds data.n_reference = {p.data.n_reference}")
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
            if "." in name:  # DVC reads params keys as dotted paths: sweep.a.5 would be key 5 of cell a
                raise ParamsError(f"{key}: a cell name cannot contain '.'; write 0.5 as 0_5, for example")
            if name in seen:
                raise ParamsError(f"{key}: the name is also a {seen[name]} cell; cell names must be unique")
            seen[name] = section
            if section == "sweep" and cell.scale is not None:
                raise ParamsError(f"{key}.scale: a guided cell reads the classifier; allowed in guided_sweep "
                                  f"(trained classifier) and exact_sweep (exact p(y | x_t))")
            if cell.variance == "learned" and getattr(cell, "model", None) not in LEARNED_VARIANCE_MODELS:
                raise ParamsError(f"{key}.variance: 'learned' needs a model with a variance output; allowed: "
                                  f"model {', '.join(LEARNED_VARIANCE_MODELS)}")
            if cell.steps > p.diffusion.T:
                raise ParamsError(f"{key}.steps: {cell.steps} exceeds diffusion.T = {p.diffusion.T}; allowed: 1..{p.diffusion.T}")
            try:
                TRAJECTORIES[cell.trajectory](p.diffusion.T, cell.steps)
            except ValueError as e:
                raise ParamsError(f"{key}.trajectory: {e}") from None


def parse_params(raw: Any, source: str = PARAMS_FILE) -> Params:
    """Validate a parsed params mapping; raise ParamsError with a one-line message naming the key."""
    try:
        params = _build(Params, raw, "")
        _cross_checks(params)
    except ParamsError as e:
        raise ParamsError(f"{source}: {str(e).lstrip('.')}") from None
    return params


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    """Read and validate params.yaml."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found") from None
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    return parse_params(raw, str(path))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    path = argv[0] if argv else PARAMS_FILE
    try:
        load_params(path)
    except ParamsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{path}: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
