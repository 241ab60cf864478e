"""End to end: `dvc repro` on a tiny-budget copy of the repository, a real DVC repo and MLflow store."""

import json

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import ROOT, SMALL_SWEEPS, copy_of, run
from pipelines.claims.spec import load_claims

pytestmark = pytest.mark.e2e

# The cells this test's assertions read, of each sweep in params.yaml: the rest would cost time and check nothing more.
CELLS = {"sweep": ["ddpm-1000", "ddim-50", "ddim-10", "ddim-4", "iddpm-1000", "iddpm-10"],
         "guided_sweep": ["ddim-50-s0", "ddim-50-s1", "ddpm-250-s10"],
         "exact_sweep": ["exact-ddpm-1000", "exact-ddim-4", "exact-ddim-50-s1", "exact-ddpm-250-s1"]}


def claim_ids() -> list[str]:
    return [c.id for c in load_claims(ROOT / "claims.yaml").claims]


def mlflow_runs(repo):
    run(["python", "-m", "pipelines.plumbing.tracking", "flush"], repo)  # the runs the background logger has not written yet
    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    return mlflow.search_runs(experiment_names=["trilemma"])


def test_dvc_repro_end_to_end(tiny_repo):
    params = yaml.safe_load((tiny_repo / "params.yaml").read_text())
    for section, keep in CELLS.items():
        params[section] = {c: params[section][c] for c in keep}
    (tiny_repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (tiny_repo / "dvc.lock").unlink()  # the full-size run's
    ddgan = [f"ddgan-{T}" for T in params["ddgan"]["T"]]
    cells = [*params["sweep"], *ddgan, *params["guided_sweep"], *params["exact_sweep"]]
    first = run(["dvc", "repro"], tiny_repo)
    assert "warning" not in first.stderr.lower(), first.stderr

    table = pd.read_csv(tiny_repo / "metrics/trilemma.csv")
    assert list(table["cell"]) == ["data", *cells]
    for col in ["scale", "nfe", "wall_s_per_1k", "wall_s_per_1k_iqr", "hq_fraction", "modes", "kl_uniform", "fid", "precision", "recall",
                "target_hit", "nll"]:
        assert col in table.columns
    # every unguided ancestral row has a bound, no DDIM or guided row has one; the data row holds the true NLL,
    # below every bound
    by_cell = table.set_index("cell")
    guided = [c for c in cells if by_cell.loc[c, "scale"] == by_cell.loc[c, "scale"]]  # not NaN
    assert set(params["guided_sweep"]) | {"exact-ddim-50-s1", "exact-ddpm-250-s1"} == set(guided)
    ancestral = [c for c in cells if by_cell.loc[c, "sampler"] == "ddpm" and c not in guided]
    assert by_cell.loc[ancestral, "nll"].notna().all() and by_cell.loc[ancestral, "nll_se"].gt(0).all()
    assert by_cell.loc[[c for c in cells if c not in ancestral], "nll"].isna().all()
    assert (by_cell.loc[ancestral, "nll"] > by_cell.loc["data", "nll"]).all()
    assert by_cell.loc["iddpm-1000", "variance"] == "learned" and by_cell.loc["iddpm-1000", "model"] == "iddpm"
    assert table.set_index("cell").loc["ddpm-1000", "nfe"] == 1000
    assert table.set_index("cell").loc["ddim-4", "nfe"] == 4
    # The exact-eps* cells do not depend on the (barely trained) network: they reach the sampler's ceiling.
    assert table.set_index("cell").loc["exact-ddpm-1000", "hq_fraction"] >= 0.95
    assert table.set_index("cell").loc["exact-ddim-4", "hq_fraction"] < 0.5
    # Guided rows carry their target-hit rate; with the exact score and p(y | x_t), s = 1 hits the targets.
    assert by_cell.loc[guided, "target_hit"].between(0, 1).all()
    assert by_cell.loc[[c for c in cells if c not in guided], "target_hit"].isna().all()
    assert by_cell.loc["exact-ddpm-250-s1", "target_hit"] >= 0.95
    assert by_cell.loc["ddpm-250-s10", "nfe"] == 250
    # Scale 0 is the unguided cell, bit for bit, for the same seed.
    s0, unguided = (np.load(tiny_repo / f"samples/{c}.npz") for c in ("ddim-50-s0", "ddim-50"))
    assert np.array_equal(s0["x"], unguided["x"]) and "y" in s0 and "y" not in unguided
    assert (by_cell.loc["ddim-50-s0", ["hq_fraction", "fid", "precision", "recall"]]
            == by_cell.loc["ddim-50", ["hq_fraction", "fid", "precision", "recall"]]).all()
    # DDGAN rows: T generator calls, no sampler options, no bound, no targets
    assert list(by_cell.loc[ddgan, "nfe"]) == params["ddgan"]["T"] and (by_cell.loc[ddgan, "sampler"] == "ddgan").all()
    assert by_cell.loc[ddgan, ["nll", "target_hit", "scale", "eta", "variance"]].isna().all().all()
    losses = pd.read_csv(tiny_repo / "plots/train_ddgan/4/losses.csv", dtype={"t": str})
    assert list(losses.columns) == ["step", "t", "term", "value"]
    assert set(losses["t"]) == {"all", "0", "1", "2", "3"} and set(losses["term"]) == {"d_loss", "g_loss", "r1"}
    assert losses["value"].notna().all() and (losses[losses["term"] == "r1"]["value"] >= 0).all()
    rendered = json.loads(run(["dvc", "plots", "show", "--json", "plots/train_ddgan/4/losses.csv"], tiny_repo).stdout)
    encoding = rendered["data"]["plots/train_ddgan/4/losses.csv"][0]["content"]["encoding"]
    assert encoding["color"]["field"] == "t" and encoding["row"]["field"] == "term"  # .dvc/plots/by_t.json
    assert (tiny_repo / "plots/train_classifier/accuracy.csv").read_text().startswith(
        "t_lo,t_hi,t_mid,accuracy,chance,bayes_accuracy\n")
    sampled = table[table["sampler"] != "train split"]  # the data row takes no time
    assert (sampled["wall_s_per_1k"] > 0).all() and (sampled["wall_s_per_1k_iqr"] >= 0).all()
    timing = json.loads((tiny_repo / "metrics/timing/ddim-4.json").read_text())
    assert timing["repeats"] == params["timing"]["repeats"] and timing["threads"] == 1 and timing["device"]
    assert set(np.load(tiny_repo / "samples/ddim-4.npz").files) == {"x", "nfe"}  # no timing in the samples
    md = (tiny_repo / "metrics/trilemma.md").read_text()
    assert all(f"| {c} |" in md for c in cells)
    assert "nats/dim in data units" in md
    assert (tiny_repo / "metrics/trilemma.png").stat().st_size > 10_000
    assert (tiny_repo / "metrics/guidance.png").stat().st_size > 10_000
    assert all((tiny_repo / f"plots/samples/{c}.png").exists() for c in cells)

    # dvc metrics show: one row per cell (its own stage's row) and one per claim
    shown = next(iter(json.loads(run(["dvc", "metrics", "show", "--json"], tiny_repo).stdout).values()))["data"]
    assert {f"metrics/cells/{c}.json" for c in ["data", *cells]} <= set(shown)
    assert {f"metrics/claims/{c}.json" for c in claim_ids()} <= set(shown)

    stages = {"prepare", "evaluator", "reference", "train_ddpm", "finetune_iddpm", "train_sd2015", "train_classifier",
              "table", "claims",
              *(f"sample@{c}" for c in params["sweep"]), *(f"sample_guided@{c}" for c in params["guided_sweep"]),
              *(f"sample_exact@{c}" for c in params["exact_sweep"]),
              *(f"{stage}@{T}" for T in params["ddgan"]["T"] for stage in ("train_ddgan", "sample_ddgan"))}
    runs = mlflow_runs(tiny_repo)
    assert sorted(runs["tags.mlflow.runName"]) == sorted(stages)
    assert (runs["status"] == "FINISHED").all()
    by_run = runs.set_index("tags.mlflow.runName")
    assert by_run.loc["table", "metrics.ddpm-1000.hq_fraction"] == pytest.approx(by_cell.loc["ddpm-1000", "hq_fraction"])
    # each cell's own run carries its row, so cells compare as columns of MLflow's runs table
    for stage, cell in (("sample@ddpm-1000", "ddpm-1000"), ("sample_guided@ddim-50-s1", "ddim-50-s1"),
                        ("sample_exact@exact-ddim-4", "exact-ddim-4"), ("sample_ddgan@4", "ddgan-4")):
        for col in ("hq_fraction", "fid", "precision", "recall", "nfe", "timing.wall_s_per_1k"):
            assert by_run.loc[stage, f"metrics.{col}"] == pytest.approx(by_cell.loc[cell, col.removeprefix("timing.")]), \
                (stage, col)
    assert by_run.loc["sample_guided@ddim-50-s1", "metrics.target_hit"] == pytest.approx(by_cell.loc["ddim-50-s1", "target_hit"])
    assert by_run.loc["reference", "metrics.hq_fraction"] == pytest.approx(by_cell.loc["data", "hq_fraction"])
    # a run lasts as long as its stage did, start-up included, not the few milliseconds of logging it
    assert (by_run.loc["train_ddpm", "end_time"] - by_run.loc["train_ddpm", "start_time"]).total_seconds() > 1

    second = run(["dvc", "repro"], tiny_repo)
    assert "Running stage" not in second.stdout
    assert "Data and pipelines are up to date" in second.stdout
    assert len(mlflow_runs(tiny_repo)) == len(stages)
    assert "up to date" in run(["dvc", "status"], tiny_repo).stdout

    # Changing one cell's params re-samples and re-scores that cell alone; the table gathers it, the claims are checked
    # on it (and params.yaml is validated again). The other cells' rows are their old bytes.
    rows = {c: (tiny_repo / f"metrics/cells/{c}.json").read_bytes() for c in cells}
    params["sweep"]["ddim-10"]["eta"] = 0.5
    (tiny_repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = run(["dvc", "repro"], tiny_repo).stdout
    ran = sorted(line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage"))
    assert ran == ["claims", "sample@ddim-10", "table", "validate"]
    assert [c for c in cells if (tiny_repo / f"metrics/cells/{c}.json").read_bytes() != rows[c]] == ["ddim-10"]

    # Rerunning a cell whose params did not change writes the same samples and row: only its timing and the table move.
    samples = (tiny_repo / "samples/ddim-4.npz").read_bytes()
    out = run(["dvc", "repro", "-f", "-s", "sample@ddim-4"], tiny_repo).stdout
    assert (tiny_repo / "samples/ddim-4.npz").read_bytes() == samples
    assert (tiny_repo / "metrics/cells/ddim-4.json").read_bytes() == rows["ddim-4"]
    out = run(["dvc", "repro"], tiny_repo).stdout
    ran = sorted(line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage"))
    assert ran == ["claims", "table"]  # the table holds the new timing, so the claims are checked again

    # Fine-tuning again reruns the iDDPM cells only: the DDPM and exact cells do not read models/iddpm.pt.
    params["finetune_iddpm"]["steps"] = 20
    (tiny_repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = run(["dvc", "repro"], tiny_repo).stdout
    ran = sorted(line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage"))
    assert ran == sorted(["validate", "table", "claims", "finetune_iddpm", *(f"sample@{c}" for c in params["sweep"]
                                                          if params["sweep"][c]["model"] == "iddpm")])

    # Retraining the classifier reruns the guided cells only.
    params["train_classifier"]["steps"] = 20
    (tiny_repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = run(["dvc", "repro"], tiny_repo).stdout
    ran = sorted(line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage"))
    assert ran == sorted(["validate", "table", "claims", "train_classifier",
                          *(f"sample_guided@{c}" for c in params["guided_sweep"])])

    # A new DDGAN T adds its two stages and reruns no other generator (T is in the cmd, not in their params).
    params["ddgan"]["T"] = [*params["ddgan"]["T"], 2]
    (tiny_repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = run(["dvc", "repro"], tiny_repo).stdout
    ran = sorted(line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage"))
    assert ran == ["claims", "sample_ddgan@2", "table", "train_ddgan@2", "validate"]
    assert pd.read_csv(tiny_repo / "metrics/trilemma.csv").set_index("cell").loc["ddgan-2", "nfe"] == 2


def test_sample_guided_refuses_a_classifier_from_another_schedule(small_run, tmp_path):
    """A classifier trained on other noise levels than the model fails the stage in one line, before sampling."""
    repo = copy_of(small_run, tmp_path / "repo")  # its data and models/ddpm.pt built, on the linear schedule
    cell = next(iter(SMALL_SWEEPS["guided_sweep"]))
    (repo / f"samples/{cell}.npz").unlink()
    py = ["python", "-m"]
    params = yaml.safe_load((repo / "params.yaml").read_text())
    (repo / "params.yaml").write_text(yaml.safe_dump({**params, "diffusion": {"schedule": "cosine", "T": 1000}}))
    clf = ["models/classifier.pt", "plots/c.csv", "plots/c.png", "plots/a.csv", "plots/a.png"]
    run([*py, "pipelines.stages.train_classifier", "data/train.npz", "data/reference.npz", *clf], repo)
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    proc = run([*py, "pipelines.stages.sample_guided", "models", "models/classifier.pt", "data/reference.npz", "data/stats.npz",
                "samples", "plots/samples", "metrics/cells", "metrics/timing"], repo, check=False,
               DVC_STAGE=f"sample_guided@{cell}")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: models/classifier.pt: trained on schedule {'schedule': 'cosine', 'T': 1000}, but models/ddpm.pt on "
        "{'schedule': 'linear', 'T': 1000}; rerun train_classifier"]
    assert not (repo / f"samples/{cell}.npz").exists()
