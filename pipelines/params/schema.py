"""The whole of params.yaml as one frozen dataclass, `Params`: its sections by name, and the lookups stages use."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from pipelines.params.cells import CellParams, DDGANParams, GuidedCellParams, SweepCellParams
from pipelines.params.errors import ParamsError
from pipelines.params.fields import choice
from pipelines.params.sections import (
    DataParams, DiffusionParams, EvaluateParams, GuidanceParams, NllParams, RuntimeParams, SampleParams,
    TimingParams,
)
from pipelines.params.swissroll import EXPERIMENTS, SwissRollParams
from pipelines.params.training import (
    ClassifierParams, DDGANTrainParams, FinetuneParams, SD2015Params, TrainParams,
)


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
    swissroll: SwissRollParams  # the swiss roll experiment: removed with pipelines/params/swissroll.py
    evaluate: EvaluateParams
    runtime: RuntimeParams

    def cells(self) -> dict[str, CellParams]:
        """Every sampler cell of the main data set in table order: trained, DDGAN, guided, exact."""
        return {**self.sweep, **self.ddgan.cells(), **self.guided_sweep, **self.exact_sweep}

    def cell(self, section: str, name: str | None) -> tuple[str, CellParams]:
        """Cell `name` of sweep `section` (sweep, guided_sweep, exact_sweep) with its params: the one lookup every
        sampling stage makes. Name None: the section's one cell (an experiment's, see `experiment`). ParamsError
        naming the cell where there is no such cell."""
        cells = getattr(self, section)
        if name is None and len(cells) == 1:
            name = next(iter(cells))
        if name not in cells:
            raise ParamsError(f"params.yaml: {section}.{name}: no such cell; allowed: {', '.join(cells) or 'none'}")
        return name, cells[name]

    # --- the swiss roll experiment: removed with pipelines/params/swissroll.py (issue 28) -------------------------

    def experiment_data(self, name: str | None) -> DataParams:
        """Experiment `name`'s data section (None: the main run's), read without the rest of `experiment(name)`."""
        if name is None:
            return self.data
        choice("experiment", name, EXPERIMENTS, "experiment")
        return self.swissroll.data

    def experiment_evaluate(self, name: str | None) -> EvaluateParams:
        """Experiment `name`'s evaluate section (None: the main run's), read without the rest of `experiment(name)`."""
        if name is None:
            return self.evaluate
        choice("experiment", name, EXPERIMENTS, "experiment")
        return self.swissroll.evaluate

    def experiment(self, name: str | None) -> Params:
        """These params as experiment `name` sees them (None: the main run itself).

        `swissroll`: its data, chain, trainer and evaluate sections in place of the main ones, and one sweep cell,
        the 2015 model's full ancestral chain, as the whole sweep; the stages run on it unchanged
        (`--experiment swissroll`). Its DDGAN section is the main run's, which no
        swiss roll stage reads.
        """
        if name is None:
            return self
        choice("experiment", name, EXPERIMENTS, "experiment")
        x = self.swissroll
        cell = SweepCellParams(model="sd2015", sampler="ddpm", steps=x.diffusion.T, variance="learned")
        return dataclasses.replace(self, data=x.data, diffusion=x.diffusion, train_sd2015=x.train,
                                   evaluate=x.evaluate, sweep={x.cell_name(): cell}, guided_sweep={}, exact_sweep={})
