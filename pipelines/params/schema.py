"""The whole of params.yaml as one frozen dataclass, `Params`: its sections by name, and the lookups stages use."""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.params.cells import CellParams, DDGANParams, GuidedCellParams, SweepCellParams
from pipelines.plumbing.errors import ParamsError
from pipelines.params.sections import (
    DataParams, DiffusionParams, EvaluateParams, GuidanceParams, NllParams, RuntimeParams, SampleParams,
    TimingParams,
)
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
    evaluate: EvaluateParams
    runtime: RuntimeParams

    def cells(self) -> dict[str, CellParams]:
        """Every sampler cell of the main data set in table order: trained, DDGAN, guided, exact."""
        return {**self.sweep, **self.ddgan.cells(), **self.guided_sweep, **self.exact_sweep}

    def cell(self, section: str, name: str | None) -> tuple[str, CellParams]:
        """Cell `name` of sweep `section` (sweep, guided_sweep, exact_sweep) with its params: the one lookup every
        sampling stage makes. ParamsError naming the cell where there is no such cell."""
        cells = getattr(self, section)
        if name not in cells:
            raise ParamsError(f"params.yaml: {section}.{name}: no such cell; allowed: {', '.join(cells) or 'none'}")
        return name, cells[name]
