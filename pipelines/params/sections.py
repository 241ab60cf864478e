"""The sections every run reads besides its trainers and cells: data, runtime, diffusion, sampling, timing, the
bound's estimate, guidance's labels and the scoring."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from components.data.datasets import DATASETS
from components.networks.options import DEVICES, PRECISIONS
from components.scoring.registry import FEATURE_EXTRACTORS
from components.math.schedules import SCHEDULES
from pipelines.params.fields import (
    MAX_BATCH, MAX_POINTS, MAX_PROCESSES, MAX_T, between, choice, external, require, seed_in_range,
)
from pipelines.params.training import EvaluatorTrainParams


@dataclass(frozen=True)
class DataParams:
    """A data set by name and the options its registry entry reads (`DataSpec.options`)."""

    name: str  # data set, from components.data.datasets.DATASETS
    seed: int  # the train and reference splits are deterministic in this seed
    n_train: int
    n_reference: int
    std: float | None = None  # the 2-D toys: std of each mixture component (around the curve), data units
    path: str | None = None  # cifar10: the cifar-10-batches-py folder, inside data/external/
    hflip: bool = False  # images: DDPM's random horizontal flip of training minibatches (CIFAR-10)

    def __post_init__(self):
        choice("name", self.name, DATASETS, "data set")
        spec = DATASETS[self.name]
        seed_in_range("seed", self.seed)
        between("n_train", self.n_train, 1, MAX_POINTS)
        between("n_reference", self.n_reference, 1, MAX_POINTS)
        for key in ("std", "path"):
            needed = key in spec.options
            require((getattr(self, key) is not None) == needed, key,
                    f"{'required' if needed else 'not an option'} for data set {self.name!r}"
                    + (f" (it reads {', '.join(spec.options)})" if spec.options else " (it reads no options)"))
        if self.std is not None:
            require(0 < self.std <= 1e6, "std", f"must be in (0, 1e6] (float32 data), got {self.std}")
        if self.path is not None:
            external("path", self.path)
        require(not self.hflip or spec.decoder == "discretized", "hflip", "flips images only")

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
    # training stages only: data-parallel ranks (torchrun), one device each, the global batch split among them;
    # 1 trains in the stage's own process. More than the machine's GPUs (CPU cores) fails in check_environment
    processes: int = 1

    def __post_init__(self):
        choice("device", self.device, DEVICES, "device")
        choice("precision", self.precision, PRECISIONS, "precision")
        between("processes", self.processes, 1, MAX_PROCESSES)


@dataclass(frozen=True)
class DiffusionParams:
    schedule: str  # beta schedule, from components.math.schedules.SCHEDULES
    T: int  # number of diffusion steps the model is trained on

    def __post_init__(self):
        choice("schedule", self.schedule, SCHEDULES, "schedule")
        between("T", self.T, 2, MAX_T)


@dataclass(frozen=True)
class GuidanceParams:
    label_seed: int  # target labels y ~ U{0..K-1}, one per sample, the same in every guided cell

    def __post_init__(self):
        seed_in_range("label_seed", self.label_seed)


@dataclass(frozen=True)
class SampleParams:
    n: int  # samples per cell
    seed: int  # the same seed for every cell: cells differ only in the sampler
    batch_size: int

    def __post_init__(self):
        between("n", self.n, 1, MAX_POINTS)
        seed_in_range("seed", self.seed)
        between("batch_size", self.batch_size, 1, MAX_BATCH)


@dataclass(frozen=True)
class TimingParams:
    """How a cell's speed is measured: apart from its samples, over short repeats, in a fixed number of threads."""

    repeats: int  # timed draws; the table gives their median and interquartile range
    n: int  # samples per timed draw (one batch)
    warmup: int  # untimed draws first: allocations and kernel choice stay out of the timing
    threads: int  # torch CPU threads while timing (0: torch's default); 1 keeps a busy machine from skewing it

    def __post_init__(self):
        between("repeats", self.repeats, 1, 1000)
        between("n", self.n, 1, MAX_BATCH)
        between("warmup", self.warmup, 0, 1000)
        between("threads", self.threads, 0, 4096)


@dataclass(frozen=True)
class NllParams:
    n: int  # reference points the bound is averaged over (the first n of the held-out split)
    seed: int  # x_t draws; the same for every cell, so bounds differ only by the model (common random numbers)
    batch_size: int

    def __post_init__(self):
        between("n", self.n, 1, MAX_POINTS)
        seed_in_range("seed", self.seed)
        between("batch_size", self.batch_size, 1, MAX_BATCH)


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
        choice("features", self.features, FEATURE_EXTRACTORS, "feature extractor")
        choice("reference", self.reference, ("test", "train"), "reference split")
        between("k", self.k, 1, 1000)
        require(self.n_std > 0, "n_std", "must be > 0")
        between("min_mode_count", self.min_mode_count, 1, MAX_POINTS)
        require((self.weights is not None) == (self.features == "inception"), "weights",
                "required for features inception (a local file: nothing is downloaded)" if self.weights is None
                else f"not an option for features {self.features!r} (inception only)")
        if self.weights is not None:
            external("weights", self.weights)
        require((self.train is not None) == (self.features == "lenet"), "train",
                "required for features lenet (stage evaluator trains it)" if self.train is None
                else f"not an option for features {self.features!r} (lenet only)")
        between("kid_subsets", self.kid_subsets, 1, 100_000)
        between("kid_subset_size", self.kid_subset_size, 2, MAX_POINTS)
