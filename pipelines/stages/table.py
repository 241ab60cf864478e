"""Stage `table`: gather every cell's row into the trilemma table, draw its figures, log it.

    python -m pipelines.stages.table <metrics_dir> <timing_dir> <samples_dir> <claims.yaml> \
        <trilemma.json> <trilemma.csv> <trilemma.md> <trilemma.png> <vlb_terms.png> <guidance.png>

It computes no metric: cell `c`'s row is `<metrics_dir>/c.json` (written and scored by its sample
stage), its speed `<timing_dir>/c.json`, and the row `data` (the ceiling: the split other than the one
params evaluate.reference scores against, which the header names) comes from stage `reference`. The
samples are read only for what the figures draw (the per-step bound terms of full chains) and to check
that each guided cell was guided as params say. Rows follow params' table order: trained cells, DDGAN
(`ddgan-<T>`), guided, exact. The trilemma figure labels the rows that claims.yaml's claims read.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from components.data.datasets import DATASETS
from pipelines.plumbing.atomic import atomic_save_figure, atomic_write_json, atomic_write_text
from pipelines.claims.spec import load_claims
from pipelines.claims.columns import METRICS, SETTINGS
from pipelines.plumbing.entry import entry_point, stage_args
from pipelines.plumbing.errors import InputError
from pipelines.plumbing.loading import load_json_row, load_samples
from pipelines.params import load_params
from pipelines.plots.sweeps import guidance_figure, vlb_terms_figure
from pipelines.plots.trilemma import IMAGE_TRILEMMA_METRICS, TRILEMMA_METRICS, row_family, trilemma_figure
from pipelines.plumbing.tracking_spool import StageRun, log_stage_run

NLL_UNITS = {"continuous": "nats/dim in data units", "discretized": "bits/dim"}
ROW_KEYS = ("nfe", "fid", "precision", "recall")  # in every cell's row, whatever the data set (pipelines/stages/sample.py)
TIMING_KEYS = ("wall_s_per_1k", "wall_s_per_1k_iqr", "device", "threads")  # what the table reads (pipelines/stages/timing.py)
# trilemma.csv's column after the settings, in no other output and no claim's column (so not in pipelines/claims/columns.py):
# a row's family in the trilemma figures, which the Vega-Lite chart of `dvc plots show` (.dvc/plots/trilemma.json)
# colours by.
FAMILY = "family"


def _present(v) -> bool:
    """Not a blank cell: None (no such option) and NaN (undefined metric) are left out of JSON."""
    return v is not None and not pd.isna(v)


def markdown_table(df: pd.DataFrame) -> str:
    """The table as GitHub markdown, numbers rounded for reading."""
    fmt = {"wall_s_per_1k": "{:.3f}", "hq_fraction": "{:.3f}", "kl_uniform": "{:.4f}", "fid": "{:.4f}",
           "kid": "{:.5f}", "kid_std": "{:.5f}", "classifier_score": "{:.3f}",
           "precision": "{:.3f}", "recall": "{:.3f}", "target_hit": "{:.3f}", "scale": "{:g}", "arc_coverage": "{:.2f}",
           "cond_hq": "{:.3f}", "cond_tv": "{:.3f}", "k_bits": "{:.2f}", "k_minus_null_bits": "{:.2f}",
           "inpaint_accuracy": "{:.3f}", "inpaint_mse": "{:.4f}", "label_kl": "{:.4f}"}
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
    cells = params.cells()
    for r in rows:
        cell = cells.get(r["cell"])
        if cell is None or cell.scale is None:
            continue
        options = [f"{k} {v}" for k, v in cell.sampler_kwargs().items() if k != "clip_x0"]
        options += [f"{cell.trajectory} trajectory"] if cell.trajectory != "uniform" else []
        options += ["clip x0"] if cell.clip_x0 else []
        series.setdefault(f"{r['model']} {r['sampler']}-{cell.steps} ({', '.join(options)})", []).append(r)
    return series


def with_families(df: pd.DataFrame, drawn: list[dict]) -> pd.DataFrame:
    """The table with column FAMILY (pipelines.plots.trilemma.row_family) on the rows the trilemma figures draw
    (`drawn`), so that the PNG and the Vega-Lite chart show the same rows in the same families; empty on the others
    (the ceilings, conditioned rows)."""
    families = {r["cell"]: row_family(r) for r in drawn}
    out = df.copy()
    out.insert(len(SETTINGS), FAMILY, df["cell"].map(families))  # a setting of the row's, before the metrics
    return out


def main(argv: list[str]) -> None:
    (metrics_dir, timing_dir, samples_dir, claims_path, json_path, csv_path, md_path, png_path, terms_path,
     guidance_path) = stage_args(argv, ("metrics_dir", "timing_dir", "samples_dir", "claims.yaml", "trilemma.json",
                                        "trilemma.csv", "trilemma.md", "trilemma.png", "vlb_terms.png", "guidance.png"))
    params = load_params()
    claimed = set(load_claims(claims_path).rows) - {"data"}
    spec = DATASETS[params.data.name]
    rows, timings, full_chains = [], {}, {}
    scored, n_scored = ceiling_split(params)
    rows.append({"cell": "data", "data": params.data.name, "sampler": scored, "wall_s_per_1k": 0.0,
                 "n": n_scored, "extractor": "identity", **load_json_row(Path(metrics_dir) / "data.json", ROW_KEYS)})
    for name, cell in params.cells().items():
        n = cell.n or params.sample.n
        c = load_samples(Path(samples_dir) / f"{name}.npz", spec, n)
        if cell.scale is not None and ("y" not in c or float(c["scale"]) != cell.scale):
            raise InputError(f"{samples_dir}/{name}.npz: not guided at scale {cell.scale:g} as params say; "
                             f"rerun its stage")
        timings[name] = load_json_row(Path(timing_dir) / f"{name}.json", TIMING_KEYS)
        kw = cell.sampler_kwargs()
        rows.append({"cell": name, "data": params.data.name, "model": getattr(cell, "model", "exact"),
                     "sampler": cell.sampler, "steps": cell.steps, "n": n,
                     "trajectory": cell.trajectory if cell.sampler != "ddgan" else None, "eta": kw.get("eta"),
                     "variance": kw.get("variance"), "scale": cell.scale,
                     "condition": cell.condition.describe() if cell.condition else None,
                     "extractor": "identity", **load_json_row(Path(metrics_dir) / f"{name}.json", ROW_KEYS),
                     **{k: timings[name][k] for k in ("wall_s_per_1k", "wall_s_per_1k_iqr")}})
        if "nll_terms" in c and cell.steps == params.diffusion.T:
            full_chains[f"{name} ({getattr(cell, 'model', 'exact')}, {kw['variance']})"] = c["nll_terms"]
    T = params.diffusion.T
    # the trilemma figure: samples of the main data set's p(x), unconditioned
    trilemma_rows = [r for r in rows if not _present(r.get("condition"))]

    df = pd.DataFrame(rows)
    df = df.reindex(columns=[*SETTINGS, *METRICS]).astype({"steps": "Int64", "nfe": "Int64", "modes": "Int64",
                                                           "label_modes": "Int64", "n": "Int64"})
    by_cell = {r["cell"]: {k: r[k] for k in METRICS if _present(r.get(k))} for r in rows}  # DVC metrics and MLflow
    atomic_write_json(json_path, by_cell)
    atomic_write_text(csv_path, with_families(df, trilemma_rows[1:]).to_csv(index=False))
    atomic_write_text(md_path, markdown_document(df, params, spec, timings))
    metrics = TRILEMMA_METRICS if spec.decoder == "continuous" else IMAGE_TRILEMMA_METRICS
    atomic_save_figure(png_path, trilemma_figure(trilemma_rows[1:], ceiling=trilemma_rows[0], marked=claimed,
                                                 metrics=metrics))
    atomic_save_figure(terms_path, vlb_terms_figure(full_chains, T))
    atomic_save_figure(guidance_path, guidance_figure(guidance_series(rows, params)))
    print(f"table: {len(rows)} rows -> {md_path}")
    log_stage_run(StageRun(
        "table", metrics={f"{cell}.{k}": v for cell, m in by_cell.items() for k, v in m.items()},
        tables={"trilemma.json": df},
        artifacts=[Path(csv_path), Path(md_path), Path(png_path), Path(terms_path), Path(guidance_path)],
    ))


# Columns each part of the markdown leaves out: they are blank in every row of that part, or (the bound K and the
# arc coverage) a data set's own, shown where PAPER_COLUMNS names them.
MAIN_ONLY = ("arc_coverage", "cond_hq", "cond_tv", "inpaint_accuracy", "inpaint_mse", "k_bits", "k_minus_null_bits",
             "data", "condition")
# conditioned rows: FID and precision/recall against the unconditional reference split say nothing
CONDITIONED_DROP = ("arc_coverage", "k_bits", "k_minus_null_bits", "nll", "nll_se", "target_hit", "scale", "data",
                    "eta", "modes", "kl_uniform", "label_modes", "label_kl", "fid", "precision", "recall",
                    "inpaint_accuracy", "inpaint_mse")
# inpainted rows: completions of reference images, whose FID, KID and precision/recall against that split are scores
INPAINT_DROP = ("arc_coverage", "k_bits", "k_minus_null_bits", "nll", "nll_se", "target_hit", "scale", "data",
                "modes", "kl_uniform", "label_modes", "label_kl", "hq_fraction", "cond_hq", "cond_tv")
# A data set's columns from its paper, and the header's sentence on them: the swiss roll's (profiles/swissroll.yaml)
# are Sohl-Dickstein et al. 2015's Table 1 and its own arc coverage (components/data/swiss_roll.py).
PAPER_COLUMNS = {"swissroll": ("arc_coverage", "k_bits", "k_minus_null_bits")}


def paper_sentence(params) -> str:
    """The header's sentence on the data set's PAPER_COLUMNS ('' for none)."""
    if params.data.name != "swissroll":
        return ""
    return (f"Swiss roll (Sohl-Dickstein et al. 2015, Table 1: K = 2.35 bits, K - L_null = 6.45 bits): noise std "
            f"{params.data.std:g} around the z-scored curve, T = {params.diffusion.T} ({params.diffusion.schedule} "
            f"schedule). `hq_fraction`: share within {params.evaluate.n_std:g} std of the curve; `arc_coverage`: share "
            f"of 50 equal pieces of its arc holding at least {params.evaluate.min_mode_count} of them. `k_bits`: the "
            f"bound K in bits per point on unit-variance data (for `data` the true log-likelihood), "
            f"`k_minus_null_bits`: K minus the points' log-likelihood under N(0, I). ")


def markdown_document(df: pd.DataFrame, params, spec, timings: dict[str, dict]) -> str:
    """trilemma.md: the main table (the unconditioned rows), then the conditioned rows, each with the columns it
    fills."""
    inpainted = df["condition"].map(lambda c: isinstance(c, str) and c.startswith("inpaint")).astype(bool)
    main, conditioned, inpaint = df[df["condition"].isna()], df[df["condition"].notna() & ~inpainted], df[inpainted]
    shown = PAPER_COLUMNS.get(params.data.name, ())
    text = table_header(params, spec, main, timings)
    text += markdown_table(markdown_frame(main.drop(columns=list(dict.fromkeys(
        [c for c in MAIN_ONLY if c not in shown] + said(main, params))))))
    if len(conditioned):
        text += ("\n\nConditioned rows: samples of p(x) r(x) for a factor r (Sohl-Dickstein et al. 2015 §2.5; "
                 "`condition` in data units). `cond_hq`: share of samples within "
                 f"{params.evaluate.n_std:g} std of a mode of the exact conditional (the mixture times r, closed "
                 "form); `cond_tv`: total variation between their split over those modes and the exact weights.\n\n"
                 + markdown_table(markdown_frame(conditioned.drop(columns=list(
                     dict.fromkeys([*CONDITIONED_DROP, *said(conditioned, params)]))))))
    if len(inpaint):
        text += ("\n\nInpainted rows: sample i completes reference image i, its pixels outside the mask known "
                 "(Sohl-Dickstein et al. 2015 §2.5). Rule `clamp` holds the known pixels at their clean values at "
                 "every step (r(x^(t)) constant over t, as the 2015 paper); rule `noised` replaces them at every step "
                 "by a draw of q(x_t | x_0), the noise level the network was trained at (Song et al. 2021's score-SDE "
                 "imputation, RePaint without resampling). `inpaint_accuracy`: share of completions the evaluator "
                 "labels as their source's class; `inpaint_mse`: mean squared error of the sampled pixels against "
                 "the source, pixels in [-1, 1]; FID, KID and precision/recall of the completions against the "
                 "reference split.\n\n"
                 + markdown_table(markdown_frame(inpaint.drop(columns=list(
                     dict.fromkeys([*INPAINT_DROP, *said(inpaint, params)]))))))
    return text


def said(df: pd.DataFrame, params) -> list[str]:
    """Columns the markdown leaves to its header: blank in every row, `n` where every row has sample.n, `trajectory`
    where every one is uniform, and `extractor` where it is the identity (points); an image row names its extractor
    and the hash of its weights."""
    drop = [c for c in df if c not in ("cell", *MAIN_ONLY) and df[c].isna().all()]
    drop += ["n"] * bool((df["n"].dropna() == params.sample.n).all())
    drop += ["trajectory"] * bool((df["trajectory"].dropna() == "uniform").all())
    drop += ["extractor"] * bool((df["extractor"].dropna() == "identity").all())
    return list(dict.fromkeys(drop))


def markdown_frame(df: pd.DataFrame) -> pd.DataFrame:
    """The table as the markdown shows it: the bound as `nll ± se`, the time as `median ± IQR/2`."""
    md = df.drop(columns=["nll_se", "wall_s_per_1k_iqr"], errors="ignore").astype({"wall_s_per_1k": object})
    if "nll" in df:
        md["nll"] = [None if not _present(v) else f"{v:.4f}" + (f" ± {se:.4f}" if _present(se) else "")
                     for v, se in zip(df["nll"], df["nll_se"])]
    md["wall_s_per_1k"] = [f"{v:.3f}" + (f" ± {iqr / 2:.3f}" if _present(iqr) else "")
                           for v, iqr in zip(df["wall_s_per_1k"], df["wall_s_per_1k_iqr"])]
    return md


def reference_split(run) -> tuple[str, int]:
    """The split a run's FID, KID and precision/recall compare against (params evaluate.reference) and its size."""
    if run.evaluate.reference == "train":
        return "train split", run.data.n_train
    return "reference split", run.data.n_reference


def ceiling_split(run) -> tuple[str, int]:
    """The split stage `reference` scores as row `data` (the other one) and how many of its points it scores."""
    if run.evaluate.reference == "train":
        return "held-out split", min(run.sample.n, run.data.n_reference)  # data/reference.npz
    return "train split", run.sample.n


def table_header(params, spec, main: pd.DataFrame, timings: dict[str, dict]) -> str:
    """What the markdown table's columns mean, with the sizes and the timing's setting of this run: a sentence for
    each kind of row the table holds."""
    t, cells = params.timing, main[main["cell"] != "data"]
    devices = sorted({f"{r['device']}, {r['threads']} thread{'s' * (r['threads'] != 1)}" for r in timings.values()})
    has = {kind: bool(len(cells)) and bool(mask.any()) for kind, mask in (
        ("exact", cells["model"] == "exact"), ("ddgan", cells["sampler"] == "ddgan"),
        ("sd2015", cells["model"] == "sd2015"), ("guided", cells["scale"].notna()),
        ("n", cells["n"] != params.sample.n))}
    extractor = ", ".join(sorted({str(e) for e in main["extractor"].dropna()})) or params.evaluate.features
    (against, n_against), (scored, n_scored) = reference_split(params), ceiling_split(params)
    named = "" if params.evaluate.reference == "test" else " (evaluate.reference: train, as DDPM's CIFAR-10 FID)"
    text = (
        f"Trilemma table: {len(cells)} sampler cells, {params.sample.n} samples each"
        + (" (column `n` where a cell has fewer)" if has["n"] else "") + ", "
        + (f"metrics in data units against the {n_against}-point {against}{named}. "
           if spec.decoder == "continuous" else
           f"{params.data.name} images against the {n_against}-image {against}{named}: FID, KID (mean "
           f"and std over {params.evaluate.kid_subsets} subsets) and precision/recall (k = {params.evaluate.k}) on the "
           f"features of extractor {extractor}, the same in every row; `classifier_score`: exp(E KL(p(y|x) || p(y))) "
           f"of its classifier (the Inception Score's formula). ")
        + f"`wall_s_per_1k`: seconds per 1,000 samples, the median of {t.repeats} timed draws of {t.n} samples "
        f"(after {t.warmup} untimed) ± half their interquartile range, on {'; '.join(devices) or 'no device'}. "
        + ("Row `data` is the train split (the ceiling, or for FID and KID the floor). " if scored == "train split"
           else f"Row `data` is {n_scored} points of the {scored}, unseen in training (the ceiling, or for FID and "
                f"KID the floor, of a sampler that does not copy its training set). "))
    if has["exact"]:
        text += ("Model `exact` rows sample with the mixture's closed-form eps* (the sampler's ceiling, no model "
                 "error). ")
    if has["ddgan"]:
        text += ("Rows `ddgan-T` sample the Denoising Diffusion GAN trained with T steps (T generator calls, fresh z "
                 "at each). ")
    if main["label_modes"].notna().any():
        text += ("`label_modes`: how many of the 1,000 StackedMNIST modes (the evaluator's digit in each channel, mode "
                 "100 d0 + 10 d1 + d2) at least one of a row's samples lands in; `label_kl`: KL(their histogram || "
                 "uniform over the 1,000), in nats (the protocol of VEEGAN, PacGAN and DDGAN Table 3, which draw "
                 "26,000 samples). Row `data` is the ceiling of the count and the floor of the KL: the evaluator "
                 "misreads some real digits. ")
    if has["sd2015"]:
        text += "Model `sd2015` is Sohl-Dickstein et al. 2015's (its own reverse kernel, on its full chain). "
    if has["guided"]:
        text += ("`scale`: classifier-guidance scale s (ADM Alg. 1 for ddpm, Alg. 2 for ddim; exact rows guide with "
                 "the exact p(y | x_t)); `target_hit`: share of a guided row's samples "
                 + ("whose nearest mode is their target label" if spec.decoder == "continuous" else
                    "the evaluator labels as their target (an independent judge: the guided sampler never sees it)")
                 + ", targets uniform. A guided step adds one classifier forward and backward, which the "
                 "wall time includes. ")
    return text + (
        f"NFE counts denoiser evaluations. "
        f"`nll`: the variational bound (DDPM eq. 5) of each unguided ancestral chain, in {NLL_UNITS[spec.decoder]}, on "
        f"the first {params.nll.n} reference points, ± one standard error over the points"
        + ("; for `data` it is the true density's NLL" if spec.decoder == "continuous" else "")
        + ". Empty where a row has no likelihood. " + paper_sentence(params)).rstrip() + "\n\n"

if __name__ == "__main__":
    entry_point(main)
