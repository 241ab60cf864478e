"""The table's cells: a sampler, its step count and its options (exact_sweep), on a trained model (sweep), guided by
the trained classifier (guided_sweep), or a DDGAN row (ddgan.T); and the factors r(x) a cell may multiply in."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from components.math.schedules import TRAJECTORIES
from components.math.variances import VARIANCES
from components.sampling.registry import SAMPLERS
from pipelines.params.fields import MAX_POINTS, MAX_T, MAX_WIDTH, between, choice, require

# Trained models a sweep cell can sample from: the EMA weights of models/<name>.pt (dvc.yaml), written
# by train_ddpm, finetune_iddpm and train_sd2015. iddpm and sd2015 learn their variance; sd2015's kernel is
# tied to each step's beta_t (Sohl-Dickstein et al. 2015), so it runs its full chain only.
TRAINED_MODELS = ("ddpm", "iddpm", "sd2015")
LEARNED_VARIANCE_MODELS = ("iddpm", "sd2015")
FULL_CHAIN_MODELS = ("sd2015",)
FACTORS = ("delta", "gaussian", "inpaint")  # conditioning factors r(x) (Sohl-Dickstein et al. 2015 §2.5)
MASKS = ("bottom", "left", "square")  # inpaint: the hidden region, sampled; the rest is known from a source image
RULES = ("clamp", "noised")  # inpaint: how the known pixels enter each state (components/sampling/guidance.py)


@dataclass(frozen=True, kw_only=True)
class ConditionParams:
    """A factor r(x) that cells multiply into their model, p~(x) ∝ p(x) r(x) (Sohl-Dickstein et al. 2015 §2.5), in
    data units: a delta on one coordinate (it is clamped, the rest sampled), a Gaussian bump, or inpainting of
    images: sample i keeps the pixels outside `mask` of reference image i, imposed by `rule`, and samples the rest."""

    factor: str  # delta | gaussian | inpaint
    coordinate: int | None = None  # delta: the known coordinate (index into the flattened sample)
    value: float | None = None  # delta: its value
    center: list[float] | None = None  # gaussian: the bump's centre, one number per coordinate
    std: float | None = None  # gaussian: its standard deviation
    mask: str | None = None  # inpaint: the hidden region, bottom | left (half) | square (centred)
    rule: str | None = None  # inpaint: clamp (known pixels at x0) | noised (at each state's noise level)
    size: int | None = None  # inpaint, mask square only: its side in pixels; default half the shorter side, rounded up

    OPTIONS: ClassVar[dict[str, tuple[str, ...]]] = {"delta": ("coordinate", "value"), "gaussian": ("center", "std"),
                                                     "inpaint": ("mask", "rule")}

    def __post_init__(self):
        choice("factor", self.factor, FACTORS, "factor")
        needs = self.OPTIONS[self.factor]
        for key in ("coordinate", "value", "center", "std", "mask", "rule"):
            given = getattr(self, key) is not None
            require(given == (key in needs), key, f"{'required' if key in needs else 'not an option'} for factor "
                    f"{self.factor!r} (it takes {' and '.join(needs)})")
        if self.factor == "delta":
            between("coordinate", self.coordinate, 0, MAX_WIDTH)
        elif self.factor == "gaussian":
            require(self.std > 0, "std", f"must be > 0, got {self.std}")
        else:
            choice("mask", self.mask, MASKS, "mask")
            choice("rule", self.rule, RULES, "rule")
        if self.size is not None:
            require(self.mask == "square", "size", "applies to factor 'inpaint' with mask 'square' only")
            between("size", self.size, 1, MAX_WIDTH)  # and at most the image side: pipelines.params.checks

    def describe(self) -> str:
        """The factor in a few characters, for the table: `x[0] = 0`, `N([2, 2], 1^2)` or `inpaint bottom (noised)`."""
        if self.factor == "delta":
            return f"x[{self.coordinate}] = {self.value:g}"
        if self.factor == "inpaint":
            size = "" if self.size is None else f" {self.size}"
            return f"inpaint {self.mask}{size} ({self.rule})"
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
        self.check_sampler()
        if self.n is not None:
            between("n", self.n, 1, MAX_POINTS)
        choice("trajectory", self.trajectory, TRAJECTORIES, "trajectory")
        between("steps", self.steps, 1, MAX_T)  # and at most diffusion.T: pipelines.params.checks
        require(self.scale is None or self.scale >= 0, "scale", f"must be >= 0, got {self.scale}")

    def check_sampler(self) -> None:
        """The sampler by name, and its own options: DDIM's eta, DDPM's variance."""
        choice("sampler", self.sampler, SAMPLERS, "sampler")
        if self.sampler == "ddim":
            require(self.variance is None, "variance", "applies to sampler ddpm only")
            # DDIM eq. 16: above 1, sigma_t^2 can exceed 1 - abar_{t-1} and the direction term's root is of a negative
            require(self.eta is None or 0 <= self.eta <= 1, "eta", f"must be in [0, 1], got {self.eta}")
        else:
            require(self.eta is None, "eta", "applies to sampler ddim only")
            if self.variance is not None:
                choice("variance", self.variance, VARIANCES, "variance")

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
        choice("model", self.model, TRAINED_MODELS, "model")
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

    def check_sampler(self) -> None:
        """Its one sampler, the generator's chain, has no options."""

    def sampler_kwargs(self) -> dict[str, Any]:
        return {}


@dataclass(frozen=True)
class DDGANParams:
    T: list[int]  # one trained generator (train_ddgan@T) and one table row (ddgan-T) per entry; [] for none

    def __post_init__(self):
        require(all(1 <= T <= MAX_T for T in self.T), "T", f"every entry must be in [1, {MAX_T:,}], got {self.T}")
        require(len(set(self.T)) == len(self.T), "T", f"entries must be distinct, got {self.T}")

    def cells(self) -> dict[str, GANCellParams]:
        """The table rows: ddgan-<T>, T denoising steps of the generator trained with T."""
        return {f"ddgan-{T}": self.cell(T) for T in self.T}

    @staticmethod
    def cell(T: int) -> GANCellParams:
        """Row ddgan-<T>, from T alone: stage sample_ddgan@<T> reads no other entry of ddgan.T."""
        return GANCellParams(model=f"ddgan-{T}", steps=T)
