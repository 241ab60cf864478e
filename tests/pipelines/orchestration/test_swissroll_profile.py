"""The profile swissroll (profiles/swissroll.yaml): Sohl-Dickstein et al. 2015's 2-D swiss roll and its 2015 model at
the paper's T = 40, run as every profile is (`python -m pipelines.orchestration.profile`), at the demo's budgets."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from conftest import ROOT, stage_env
from pipelines.orchestration.demo import budgets

pytestmark = pytest.mark.slow

ROW = "swissroll-sd2015-40"
# what its one row needs, and nothing else: no DDPM, iDDPM, classifier or DDGAN training on the swiss roll
STAGES = {"validate", "prepare", "evaluator", "reference", "train_sd2015", f"sample@{ROW}", "table", "claims"}


def test_the_swissroll_profile_runs_its_row_alone_with_the_papers_columns_and_claims(tmp_path):
    demo, _ = budgets(ROOT)
    over = tmp_path / "tiny.yaml"  # the demo's budgets for the sections this profile runs; its own T and cell kept
    over.write_text(yaml.safe_dump({"merge": {k: demo[k] for k in ("data", "train_sd2015", "sample", "timing",
                                                                    "nll")}}))
    (tmp_path / "external").mkdir()
    ws = tmp_path / "ws"
    proc = subprocess.run([sys.executable, "-m", "pipelines.orchestration.profile", "swissroll", "--dir", str(ws), "--overlay",
                           str(over), "--cache", str(tmp_path / "cache"), "--external", str(tmp_path / "external")],
                          cwd=ROOT, env=stage_env(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}"),
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    # what ran (a fresh cache restores nothing); the workspace's dvc.lock starts as the checkout's, so it lists more
    assert set(re.findall(r"Running stage '([^']+)'", proc.stdout)) == STAGES, proc.stdout[-3000:]
    table = pd.read_csv(ws / "metrics/trilemma.csv").set_index("cell")
    assert list(table.index) == ["data", ROW] and set(table["data"]) == {"swissroll"}
    row = table.loc[ROW]
    assert (row["model"], row["sampler"], row["steps"], row["variance"], row["nfe"]) == (
        "sd2015", "ddpm", 40, "learned", 40)
    # the paper's columns (Table 1's K and K - L_null) and the roll's own coverage, in the csv and the markdown
    for cell in ("data", ROW):
        assert table.loc[cell, ["arc_coverage", "k_bits", "k_minus_null_bits", "nll"]].notna().all(), cell
    assert pd.isna(table.loc[ROW, "modes"])
    md = (ws / "metrics/trilemma.md").read_text()
    assert "| k_bits | k_minus_null_bits |" in md and "K = 2.35 bits" in md and "| modes |" not in md
    claims = json.loads((ws / "metrics/claims.json").read_text())["claims"]
    assert {c["id"]: c["status"] != "not measured" for c in claims} == {
        "swissroll-bound-reaches-the-paper": True, "swissroll-beats-the-null-gaussian": True}
