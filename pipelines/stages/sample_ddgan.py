"""Stage `sample_ddgan@<T>`: the table row ddgan-<T>, T denoising steps of train_ddgan@<T>'s EMA generator.

    python -m pipelines.stages.sample_ddgan <models/> <reference.npz> <reference_stats.npz> <samples/> <plots/> <cells/> \
        <timing/>     # DVC_STAGE=sample_ddgan@<T>; the generator models/ddgan-<T>.pt, the outputs <folder>/ddgan-<T>.*

DDGAN's sampler (`components.sampling.samplers.sample_ddgan`): from x_T ~ N(0, I), x_{t-1} ~ q(x_{t-1} | x_t,
G(x_t, z, t)) with fresh z at each step, NFE = T, G through the params runtime's forward wrapper like every
network. Timing, outputs and logging are `sample@<cell>`'s.
"""

from __future__ import annotations

from components.math.schedules import make_schedule
from pipelines.plumbing.entry import checkpoint_path, dvc_stage, entry_point, parse_T, stage_args
from pipelines.plumbing.errors import InputError
from pipelines.plumbing.loading import load_dataset
from pipelines.params import load_params
from pipelines.params.cells import DDGANParams
from pipelines.stages.sample import CellFiles, CellRun, load_ema_generator, run_cell


def main(argv: list[str]) -> None:
    models_dir, *paths = stage_args(argv, ("models/", *CellFiles.ARGS))
    params = load_params()
    T = parse_T(dvc_stage("sample_ddgan")[1] or "")
    cell_name, cell = f"ddgan-{T}", DDGANParams.cell(T)  # the checkpoint must have been trained with this T (below)
    files, ckpt_path = CellFiles.of(cell_name, *paths), checkpoint_path(models_dir, cell_name)
    ref_path = files.reference
    G, cfg = load_ema_generator(ckpt_path)
    ref = load_dataset(ref_path, params.data.name)
    if cfg["diffusion"]["T"] != T:
        raise InputError(f"{ckpt_path}: trained with T={cfg['diffusion']['T']}, not {T}; rerun train_ddgan@{T}")
    if (ref.shift, ref.scale) != (cfg["data"]["shift"], cfg["data"]["scale"]):
        raise InputError(f"{ref_path}: its model-space map differs from the one {ckpt_path} was trained with")
    full = make_schedule(cfg["diffusion"]["schedule"], T)
    run_cell(CellRun(f"sample_ddgan@{T}", cell_name, cell, G, full, tuple(cfg["data_shape"])), ref, params, files)


if __name__ == "__main__":
    entry_point(main)
