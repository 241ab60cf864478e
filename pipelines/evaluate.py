"""Stage `evaluate`: score every sweep cell and write the trilemma table.

    python -m pipelines.evaluate <samples_dir> <train.npz> <reference.npz> \
        <trilemma.json> <trilemma.csv> <trilemma.md> <trilemma.png>

Cell `c`'s samples are read from `<samples_dir>/c.npz` (the sample stage's output). All metrics
are in data units, against the held-out reference split. A first row, `data`, scores n points of
the train split the same way: the ceiling that a perfect sampler would reach on each metric.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from components.metrics import sample_metrics
from pipelines.io import (
    atomic_save_figure, atomic_write_json, atomic_write_text, entry_point, load_dataset, load_npz, stage_args,
)
from pipelines.params import load_params
from pipelines.plots import trilemma_figure
from pipelines.tracking import StageRun, log_stage_run

SETTINGS = ["cell", "model", "sampler", "steps", "eta", "variance"]
METRICS = ["nfe", "wall_s_per_1k", "hq_fraction", "modes", "kl_uniform", "fid", "precision", "recall"]


def _present(v) -> bool:
    """Not a blank cell: None (no such option) and NaN (undefined metric) are left out of JSON."""
    return v is not None and not pd.isna(v)


def markdown_table(df: pd.DataFrame) -> str:
    """The table as GitHub markdown, numbers rounded for reading."""
    fmt = {"wall_s_per_1k": "{:.3f}", "hq_fraction": "{:.3f}", "kl_uniform": "{:.4f}", "fid": "{:.4f}",
           "precision": "{:.3f}", "recall": "{:.3f}"}
    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    for _, row in df.iterrows():
        cells = []
        for col in df.columns:
            v = row[col]
            cells.append(fmt.get(col, "{}").format(v) if _present(v) else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    samples_dir, train_path, ref_path, json_path, csv_path, md_path, png_path = stage_args(
        argv, ("samples_dir", "train.npz", "reference.npz", "trilemma.json", "trilemma.csv", "trilemma.md",
               "trilemma.png"))
    params = load_params()
    e = params.evaluate
    ref = load_dataset(ref_path)
    train = load_dataset(train_path)
    cells = {name: load_npz(Path(samples_dir) / f"{name}.npz", ("x", "nfe", "wall_s_per_1k")) for name in params.sweep}

    def score(x: np.ndarray) -> dict:
        return sample_metrics(x, ref.x, features=e.features, k=e.k, modes=ref.modes, mode_std=ref.mode_std,
                              n_std=e.n_std, min_count=e.min_mode_count)

    n = params.sample.n
    rows = [{"cell": "data", "sampler": "train split", "nfe": 0, "wall_s_per_1k": 0.0, **score(train.x[:n])}]
    for name, cell in params.sweep.items():
        c = cells[name]
        kw = cell.sampler_kwargs()
        rows.append({"cell": name, "model": cell.model, "sampler": cell.sampler, "steps": cell.steps, "eta": kw.get("eta"),
                     "variance": kw.get("variance"), "nfe": int(c["nfe"]), "wall_s_per_1k": float(c["wall_s_per_1k"]),
                     **score(c["x"])})
        print(f"evaluate: {name}: " + ", ".join(f"{k} {v:.4g}" for k, v in rows[-1].items() if isinstance(v, float)))

    df = pd.DataFrame(rows)
    df = df.reindex(columns=[c for c in SETTINGS + METRICS if c in df.columns]).astype({"steps": "Int64", "nfe": "Int64"})
    by_cell = {r["cell"]: {k: r[k] for k in METRICS if _present(r[k])} for r in rows}  # DVC metrics and MLflow
    atomic_write_json(json_path, by_cell)
    atomic_write_text(csv_path, df.to_csv(index=False))
    header = (f"Trilemma table: {len(rows) - 1} sampler cells, {n} samples each, metrics in data units against the "
              f"{len(ref.x)}-point reference split; wall time per 1,000 samples after warm-up. "
              f"Row `data` is the train split (the ceiling); model `exact` rows sample with the mixture's closed-form eps* "
              f"(the sampler's ceiling, no model error).\n\n")
    atomic_write_text(md_path, header + markdown_table(df))
    atomic_save_figure(png_path, trilemma_figure(rows[1:], ceiling=rows[0]))
    log_stage_run(StageRun(
        "evaluate", params={"evaluate": dataclasses.asdict(e)},
        metrics={f"{cell}.{k}": v for cell, m in by_cell.items() for k, v in m.items()},
        tables={"trilemma.json": df}, artifacts=[Path(csv_path), Path(md_path), Path(png_path)],
    ))


if __name__ == "__main__":
    entry_point(main)
