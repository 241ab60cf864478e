"""The swiss roll as an experiment of its own: Sohl-Dickstein et al. 2015's 2-D toy with its data, chain and model.

ISOLATED FOR REMOVAL (issue 28: the swiss roll becomes a profile). Everything the `swissroll` section and
`--experiment swissroll` need is here, plus three marked blocks: `Params.swissroll` and `Params.experiment*`
(pipelines/params/schema.py) and `_check_swissroll` (pipelines/params/checks.py). Deleting this module and those
blocks removes the experiment.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.params.errors import ParamsError
from pipelines.params.fields import require
from pipelines.params.sections import DataParams, DiffusionParams, EvaluateParams
from pipelines.params.training import SD2015Params

EXPERIMENTS = ("swissroll",)  # sections that are an experiment of their own: data, chain, model (Params.experiment)


@dataclass(frozen=True)
class SwissRollParams:
    """Sohl-Dickstein et al. 2015's 2-D toy as an experiment of its own: its data, its chain and its 2015 model."""

    data: DataParams
    diffusion: DiffusionParams
    train: SD2015Params
    evaluate: EvaluateParams  # its own: points are their own features, whatever the main run scores with

    def __post_init__(self):
        require(self.data.name == "swissroll", "data.name", f"must be swissroll, got {self.data.name!r}")
        require(self.evaluate.features == "identity", "evaluate.features",
                f"must be identity (points), got {self.evaluate.features!r}")

    def cell_name(self) -> str:
        return f"swissroll-sd2015-{self.diffusion.T}"


def stage_name(stage: str, experiment: str | None) -> str:
    """dvc.yaml's name for stage `stage` run on `experiment` (its MLflow run's name too): `<stage>_<experiment>`."""
    return stage if experiment is None else f"{stage}_{experiment}"


def experiment_args(argv: list[str]) -> tuple[str | None, list[str]]:
    """A stage's leading `--experiment NAME` (dvc.yaml's cmd), and the rest of its arguments: the stage then reads
    `load_params().experiment(NAME)`. None when absent (the main run)."""
    if argv[:1] != ["--experiment"]:
        return None, argv
    if len(argv) < 2 or argv[1] not in EXPERIMENTS:
        raise ParamsError(f"--experiment: expected one of {', '.join(EXPERIMENTS)}, got {argv[1:2] or 'nothing'}")
    return argv[1], argv[2:]
