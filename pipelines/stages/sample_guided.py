"""Stage `sample_guided@<cell>`: one guided_sweep cell, guided by the trained noise-aware classifier.

    python -m pipelines.stages.sample_guided <models/> <classifier.pt> <reference.npz> <reference_stats.npz> <samples/> \
        <plots/> <cells/> <timing/>     # DVC_STAGE=sample_guided@<cell>; the model models/<its model>.pt

The sweep cell's sampler on the model's EMA weights, with classifier guidance at the cell's
scale s (ADM Alg. 1 for ddpm, Alg. 2 for ddim) towards targets y ~ U{0..K-1} drawn with
`guidance.label_seed`. Timing, outputs and logging are `sample@<cell>`'s, plus the targets
(saved as `y` for the target-hit rate). s = 0 runs the unguided sampler: the unguided cell's samples.
"""

from __future__ import annotations

from components.math.schedules import make_schedule
from pipelines.plumbing.entry import checkpoint_path, dvc_stage, entry_point, stage_args
from pipelines.plumbing.errors import InputError
from pipelines.plumbing.loading import load_dataset
from pipelines.params import load_params
from pipelines.stages.sample import CellFiles, CellRun, check_cell_model, load_ema_classifier, load_ema_model, run_cell


def main(argv: list[str]) -> None:
    models_dir, clf_path, *paths = stage_args(argv, ("models/", "classifier.pt", *CellFiles.ARGS))
    stage, item = dvc_stage("sample_guided")
    params = load_params()
    cell_name, cell = params.cell("guided_sweep", item)
    files = CellFiles.of(cell_name, *paths)
    ref_path, ckpt_path = files.reference, checkpoint_path(models_dir, cell.model)
    model, cfg = load_ema_model(ckpt_path)
    classifier, clf_cfg = load_ema_classifier(clf_path)
    ref = load_dataset(ref_path, params.data.name)
    check_cell_model(f"guided_sweep.{cell_name}", cell, ckpt_path, cfg, ref_path, ref)
    # The classifier must know the model's noise levels and data: the same schedule, T and training data.
    if clf_cfg["diffusion"] != cfg["diffusion"]:
        raise InputError(f"{clf_path}: trained on schedule {clf_cfg['diffusion']}, but {ckpt_path} on {cfg['diffusion']}; "
                         f"rerun train_classifier")
    if clf_cfg["data"] != cfg["data"]:
        raise InputError(f"{clf_path}: trained on other data than {ckpt_path} (data fingerprint or model-space map differ)")
    full = make_schedule(cfg["diffusion"]["schedule"], cfg["diffusion"]["T"])
    run_cell(CellRun(f"{stage}@{cell_name}", cell_name, cell, model, full, tuple(cfg["data_shape"]), classifier,
                     clf_cfg["n_classes"]), ref, params, files)


if __name__ == "__main__":
    entry_point(main)
