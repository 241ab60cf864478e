"""Stage `sample_exact@<cell>`: one exact_sweep cell's sampler driven by the mixture's closed-form eps*.

    python -m pipelines.stages.sample_exact <reference.npz> <reference_stats.npz> <samples/> <plots/> <cells/> <timing/>
    # DVC_STAGE=sample_exact@<cell>

Same sampler, schedule (params `diffusion`) and timing as `sample@<cell>`, with the network
replaced by the exact eps* of the data set's Gaussian mixture (components/data/gaussian_mixture.py):
each sampler's ceiling, with no model error. A cell with a guidance `scale` is guided by the
exact p(y | x_t), the Bayes-optimal classifier, as `sample_guided@<cell>` is by the trained one.
No checkpoint is read, so retraining does not rerun it.
"""

from __future__ import annotations

from components.data.gaussian_mixture import mixture_classifier, mixture_eps_model
from components.math.schedules import make_schedule
from pipelines.plumbing.entry import dvc_stage, entry_point, stage_args
from pipelines.plumbing.errors import InputError
from pipelines.plumbing.loading import load_dataset
from pipelines.params import load_params
from components.math.diffusion import ReverseModel
from pipelines.stages.sample import CellFiles, CellRun, run_cell


def main(argv: list[str]) -> None:
    paths = stage_args(argv, CellFiles.ARGS)
    stage, item = dvc_stage("sample_exact")
    params = load_params()
    cell_name, cell = params.cell("exact_sweep", item)
    files = CellFiles.of(cell_name, *paths)
    ref_path = files.reference
    ref = load_dataset(ref_path, params.data.name)
    if ref.modes is None:
        raise InputError(f"{ref_path}: exact_sweep needs a data set with mixture modes")
    full = make_schedule(params.diffusion.schedule, params.diffusion.T)
    means, std = ref.to_model(ref.modes), ref.mode_std * ref.scale
    run_cell(CellRun(f"{stage}@{cell_name}", cell_name, cell, ReverseModel(mixture_eps_model(full, means, std)), full,
                     tuple(ref.x.shape[1:]), mixture_classifier(full, means, std), len(means)), ref, params, files)


if __name__ == "__main__":
    entry_point(main)
