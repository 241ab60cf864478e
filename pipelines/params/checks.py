"""The rules between fields of different sections, each in one place; a section's own fields check themselves in
its dataclass's `__post_init__` (pipelines/params/sections.py, training.py, cells.py).

`check_params` runs them on the whole file: `check_run` on the main run's sections (and on the swiss roll
experiment's, as its stages see it), and the rules that concern the file as a whole.
"""

from __future__ import annotations

import math

from components.data.datasets import DATASETS
from components.math.schedules import TRAJECTORIES, make_schedule
from pipelines.params.cells import FULL_CHAIN_MODELS, LEARNED_VARIANCE_MODELS, CellParams
from pipelines.plumbing.errors import ParamsError
from pipelines.params.schema import Params

CELL_SECTIONS = ("sweep", "guided_sweep", "exact_sweep")
# the trainers' sections (and evaluate.train, the digit evaluator's, where there is one)
TRAINING_SECTIONS = ("train_ddpm", "finetune_iddpm", "train_sd2015", "train_classifier", "train_ddgan")


def check_params(p: Params) -> None:
    """Constraints between sections."""
    check_run(p)
    eps = [name for name, cell in p.cells().items() if getattr(cell, "model", None) not in FULL_CHAIN_MODELS]
    if eps and make_schedule(p.diffusion.schedule, p.diffusion.T).alphas_cumprod[-1] <= 0:
        raise ParamsError(f"diffusion.schedule: {p.diffusion.schedule!r} ends at abar_T = 0, where an eps model "
                          f"cannot recover x0 (cell {eps[0]}); it is for Sohl-Dickstein et al. 2015's model alone "
                          f"(model {', '.join(FULL_CHAIN_MODELS)}: profiles/swissroll.yaml)")


def check_run(p: Params) -> None:
    """Constraints between the sections one run's stages read."""
    _check_sizes(p)
    _check_features(p)
    _check_trainers(p)
    _check_processes(p)
    _check_cells(p)


def _check_sizes(p: Params) -> None:
    """What the data set and its splits must hold for the scores: mixture modes, enough reference points."""
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


def _check_features(p: Params) -> None:
    """The feature extractor scores the data set: points as themselves, digits with lenet, RGB with Inception."""
    spec = DATASETS[p.data.name]
    images = spec.decoder == "discretized"
    wants = {"identity": not images, "lenet": images and spec.shape[1:] == (28, 28),
             "inception": images and spec.shape[0] == 3}
    if not wants[p.evaluate.features]:
        fits = [name for name, ok in wants.items() if ok]
        raise ParamsError(f"evaluate.features: {p.evaluate.features!r} does not score {p.data.name} "
                          f"{spec.shape}; allowed: {', '.join(fits)}")


def _check_trainers(p: Params) -> None:
    """Trainer options that depend on the chain: the classifier's accuracy buckets, DDGAN's schedules."""
    if p.train_classifier.accuracy_buckets > p.diffusion.T:
        raise ParamsError(f"train_classifier.accuracy_buckets: {p.train_classifier.accuracy_buckets} exceeds "
                          f"diffusion.T = {p.diffusion.T}")
    for T in p.ddgan.T:
        try:
            make_schedule(p.train_ddgan.schedule, T)
        except ValueError as e:
            raise ParamsError(f"train_ddgan.schedule: {p.train_ddgan.schedule!r} over ddgan.T = {T} steps: "
                              f"{e}") from None


def _check_processes(p: Params) -> None:
    """runtime.processes ranks split every global batch a training stage draws into equal shares."""
    n = p.runtime.processes
    sections = {name: getattr(p, name) for name in TRAINING_SECTIONS} | {"evaluate.train": p.evaluate.train}
    for key, section in sections.items():
        if section is not None and section.batch_size % n:
            raise ParamsError(f"{key}.batch_size: {section.batch_size} is not divisible by runtime.processes {n} "
                              f"(each rank trains on an equal share of the batch)")


def _check_cells(p: Params) -> None:
    """Cell names are unique across the sweeps and DDGAN's rows; each cell fits the chain, models and data."""
    seen: dict[str, str] = {name: "ddgan" for name in p.ddgan.cells()}
    for section in CELL_SECTIONS:
        for name, cell in getattr(p, section).items():
            key = f"{section}.{name}"
            if name in seen:
                raise ParamsError(f"{key}: the name is also a {seen[name]} cell; cell names must be unique")
            seen[name] = section
            _check_factor(p, key, section, cell)
            _check_model(p, key, cell)
            _check_chain(p, key, cell)


def _check_factor(p: Params, key: str, section: str, cell: CellParams) -> None:
    """What a cell multiplies into its model: one guidance scale (where a classifier is) or one condition r(x) on
    the data's coordinates; and its own sample count, enough for precision/recall."""
    if section == "sweep" and cell.scale is not None:
        raise ParamsError(f"{key}.scale: a guided cell reads the classifier; allowed in guided_sweep "
                          f"(trained classifier) and exact_sweep (exact p(y | x_t))")
    c = cell.condition
    if c is not None and cell.scale is not None:
        raise ParamsError(f"{key}.condition: a cell multiplies in one factor: a condition or a guidance scale")
    dims = math.prod(DATASETS[p.data.name].shape)
    if c is not None and c.coordinate is not None and c.coordinate >= dims:
        raise ParamsError(f"{key}.condition.coordinate: {c.coordinate} is out of range for {p.data.name}'s "
                          f"{dims} coordinates")
    if c is not None and c.center is not None and len(c.center) != dims:
        raise ParamsError(f"{key}.condition.center: {len(c.center)} numbers, expected one per coordinate ({dims})")
    if c is not None and c.factor == "inpaint":
        _check_inpaint(p, key, cell)
    if cell.n is not None and p.evaluate.k >= cell.n:
        raise ParamsError(f"{key}.n: {cell.n} samples; precision/recall need more than evaluate.k = {p.evaluate.k}")


def _check_inpaint(p: Params, key: str, cell: CellParams) -> None:
    """An inpaint condition needs images (its mask is a region of (C, H, W)), a square that fits in them, and one
    source image of the reference split per sample."""
    spec, c, n = DATASETS[p.data.name], cell.condition, cell.n or p.sample.n
    if len(spec.shape) != 3:
        raise ParamsError(f"{key}.condition.factor: 'inpaint' masks a region of an image; {p.data.name} holds "
                          f"points of shape {spec.shape}")
    if c.size is not None and c.size > min(spec.shape[1:]):
        raise ParamsError(f"{key}.condition.size: {c.size} exceeds {p.data.name}'s image side {min(spec.shape[1:])}")
    if n > p.data.n_reference:
        raise ParamsError(f"{key}: {n} samples inpaint as many reference images; data.n_reference = "
                          f"{p.data.n_reference}")


def _check_model(p: Params, key: str, cell: CellParams) -> None:
    """The trained model can run the cell: a learned variance needs a variance output, and the 2015 model's kernel
    (Sohl-Dickstein et al. 2015) is tied to every step's beta_t, so it runs its full ancestral chain only."""
    model = getattr(cell, "model", None)
    if cell.variance == "learned" and model not in LEARNED_VARIANCE_MODELS:
        raise ParamsError(f"{key}.variance: 'learned' needs a model with a variance output; allowed: "
                          f"model {', '.join(LEARNED_VARIANCE_MODELS)}")
    if model in FULL_CHAIN_MODELS and (cell.sampler, cell.steps, cell.variance, cell.clip_x0) != (
            "ddpm", p.diffusion.T, "learned", False):
        raise ParamsError(f"{key}: model {model} samples its own kernel on every step of its chain: it needs "
                          f"sampler ddpm, steps {p.diffusion.T} (diffusion.T), variance learned, no clip_x0")


def _check_chain(p: Params, key: str, cell: CellParams) -> None:
    """The cell's steps lie on the trained chain (at most diffusion.T), and its trajectory can place them."""
    if cell.steps > p.diffusion.T:
        raise ParamsError(f"{key}.steps: {cell.steps} exceeds diffusion.T = {p.diffusion.T}; "
                          f"allowed: 1..{p.diffusion.T}")
    try:
        TRAJECTORIES[cell.trajectory](p.diffusion.T, cell.steps)
    except ValueError as e:
        raise ParamsError(f"{key}.trajectory: {e}") from None
