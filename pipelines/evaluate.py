"""Stage `evaluate`: score every sweep cell and write the trilemma table.

    python -m pipelines.evaluate <samples_dir> <train.npz> <reference.npz> \
        <trilemma.json> <trilemma.csv> <trilemma.md> <trilemma.png> <vlb_terms.png> <guidance.png>

Cell `c`'s samples are read from `<samples_dir>/c.npz` (the sample stages' output). All metrics
are in data units, against the held-out reference split, whose features and k-NN radii are
computed once. A first row, `data`, scores n points of the train split the same way: the ceiling
that a perfect sampler would reach on each metric. Its `nll` is the true mixture density's NLL on
the points every bound is computed on. DDGAN rows (`ddgan-<T>`) follow the sweep's. Guided rows add
their `scale` and `target_hit`, the share of samples whose nearest mode is their target label.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from components.data import DATASETS
from components.gaussian_mixture import mixture_log_prob
from components.metrics import reference_set, sample_metrics, target_hit_rate
from pipelines.io import (
    InputError, atomic_save_figure, atomic_write_json, atomic_write_text, entry_point, load_dataset, load_samples,
    stage_args,
)
from pipelines.params import load_params
from pipelines.plots import guidance_figure, trilemma_figure, vlb_terms_figure
from pipelines.tracking import StageRun, log_stage_run

SETTINGS = ["cell", "model", "sampler", "steps", "eta", "variance", "scale"]
METRICS = ["nfe", "wall_s_per_1k", "hq_fraction", "modes", "kl_uniform", "fid", "precision", "recall", "target_hit",
           "nll", "nll_se"]
NLL_UNITS = {"continuous": "nats/dim in data units", "discretized": "bits/dim"}


def _present(v) -> bool:
    """Not a blank cell: None (no such option) and NaN (undefined metric) are left out of JSON."""
    return v is not None and not pd.isna(v)


def markdown_table(df: pd.DataFrame) -> str:
    """The table as GitHub markdown, numbers rounded for reading."""
    fmt = {"wall_s_per_1k": "{:.3f}", "hq_fraction": "{:.3f}", "kl_uniform": "{:.4f}", "fid": "{:.4f}",
           "precision": "{:.3f}", "recall": "{:.3f}", "target_hit": "{:.3f}", "scale": "{:g}"}
    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    for _, row in df.iterrows():
        cells = []
        for col in df.columns:
            v = row[col]
            cells.append(("{}" if isinstance(v, str) else fmt.get(col, "{}")).format(v) if _present(v) else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def guidance_series(rows: list[dict], params) -> dict[str, list[dict]]:
    """Guided rows grouped by everything but the scale: one curve per guided sampler setting."""
    series: dict[str, list[dict]] = {}
    for r in rows:
        cell = params.cells().get(r["cell"])
        if cell is None or cell.scale is None:
            continue
        options = [f"{k} {v}" for k, v in cell.sampler_kwargs().items() if k != "clip_x0"]
        options += [f"{cell.trajectory} trajectory"] if cell.trajectory != "uniform" else []
        options += ["clip x0"] if cell.clip_x0 else []
        series.setdefault(f"{r['model']} {r['sampler']}-{cell.steps} ({', '.join(options)})", []).append(r)
    return series


def main(argv: list[str]) -> None:
    samples_dir, train_path, ref_path, json_path, csv_path, md_path, png_path, terms_path, guidance_path = stage_args(
        argv, ("samples_dir", "train.npz", "reference.npz", "trilemma.json", "trilemma.csv", "trilemma.md",
               "trilemma.png", "vlb_terms.png", "guidance.png"))
    params = load_params()
    e = params.evaluate
    spec = DATASETS[params.data.name]
    ref = load_dataset(ref_path, params.data.name)
    train = load_dataset(train_path, params.data.name)
    cells = {name: load_samples(Path(samples_dir) / f"{name}.npz", spec, params.sample.n) for name in params.cells()}

    reference = reference_set(ref.x, e.features, e.k)

    def score(x: np.ndarray) -> dict:
        return sample_metrics(x, reference, modes=ref.modes, mode_std=ref.mode_std, n_std=e.n_std,
                              min_count=e.min_mode_count)

    n, nll_points = params.sample.n, ref.x[: params.nll.n]
    data_row = {"cell": "data", "sampler": "train split", "nfe": 0, "wall_s_per_1k": 0.0, **score(train.x[:n])}
    if ref.modes is not None:  # the true density is known: the bound's floor
        data_row["nll"] = float(-mixture_log_prob(nll_points, ref.modes, ref.mode_std).mean() / nll_points[0].size)
    rows = [data_row]
    for name, cell in params.cells().items():
        c = cells[name]
        kw = cell.sampler_kwargs()
        likelihood = {k: float(c[k]) for k in ("nll", "nll_se") if k in c}
        if cell.scale is not None and ("y" not in c or float(c["scale"]) != cell.scale):
            raise InputError(f"{samples_dir}/{name}.npz: not guided at scale {cell.scale:g} as params say; rerun its stage")
        hit = {"target_hit": target_hit_rate(c["x"], c["y"], ref.modes)} if "y" in c and ref.modes is not None else {}
        rows.append({"cell": name, "model": getattr(cell, "model", "exact"), "sampler": cell.sampler,
                     "steps": cell.steps, "eta": kw.get("eta"), "variance": kw.get("variance"), "scale": cell.scale,
                     "nfe": int(c["nfe"]), "wall_s_per_1k": float(c["wall_s_per_1k"]), **score(c["x"]), **hit,
                     **likelihood})
        print(f"evaluate: {name}: " + ", ".join(f"{k} {v:.4g}" for k, v in rows[-1].items() if isinstance(v, float)))

    df = pd.DataFrame(rows)
    df = df.reindex(columns=SETTINGS + METRICS).astype({"steps": "Int64", "nfe": "Int64"})
    by_cell = {r["cell"]: {k: r[k] for k in METRICS if _present(r.get(k))} for r in rows}  # DVC metrics and MLflow
    atomic_write_json(json_path, by_cell)
    atomic_write_text(csv_path, df.to_csv(index=False))
    unit = NLL_UNITS[spec.decoder]
    header = (f"Trilemma table: {len(rows) - 1} sampler cells, {n} samples each, metrics in data units against the "
              f"{len(ref.x)}-point reference split; wall time per 1,000 samples after warm-up. "
              f"Row `data` is the train split (the ceiling); model `exact` rows sample with the mixture's closed-form eps* "
              f"(the sampler's ceiling, no model error). "
              f"Rows `ddgan-T` sample the Denoising Diffusion GAN trained with T steps (T generator calls, fresh z "
              f"at each). "
              f"`scale`: classifier-guidance scale s (ADM Alg. 1 for ddpm, Alg. 2 for ddim; exact rows guide with the "
              f"exact p(y | x_t)); `target_hit`: share of a guided row's samples whose nearest mode is its target label, "
              f"targets uniform. NFE counts denoiser evaluations; a guided step adds one classifier forward and backward, "
              f"which the wall time includes. "
              f"`nll`: the variational bound (DDPM eq. 5) of each unguided ancestral chain, in {unit}, on the first "
              f"{len(nll_points)} reference points, ± one standard error over the points; for `data` it is the true "
              f"density's NLL. Empty where a row has no likelihood.\n\n")
    md = df.drop(columns=["nll_se"]).astype({"nll": object})
    md["nll"] = [None if not _present(v) else f"{v:.4f}" + (f" ± {se:.4f}" if _present(se) else "")
                 for v, se in zip(df["nll"], df["nll_se"])]
    atomic_write_text(md_path, header + markdown_table(md))
    atomic_save_figure(png_path, trilemma_figure(rows[1:], ceiling=rows[0]))
    T = params.diffusion.T
    full_chains = {f"{name} ({getattr(cell, 'model', 'exact')}, {cell.sampler_kwargs()['variance']})": cells[name]["nll_terms"]
                   for name, cell in params.cells().items() if "nll_terms" in cells[name] and cell.steps == T}
    atomic_save_figure(terms_path, vlb_terms_figure(full_chains, T))
    atomic_save_figure(guidance_path, guidance_figure(guidance_series(rows, params)))
    log_stage_run(StageRun(
        "evaluate", params={"evaluate": dataclasses.asdict(e)},
        metrics={f"{cell}.{k}": v for cell, m in by_cell.items() for k, v in m.items()},
        tables={"trilemma.json": df},
        artifacts=[Path(csv_path), Path(md_path), Path(png_path), Path(terms_path), Path(guidance_path)],
    ))


if __name__ == "__main__":
    entry_point(main)
