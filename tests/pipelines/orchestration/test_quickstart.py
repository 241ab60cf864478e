"""What the README's Quickstart tells a new user to run works as it says."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, SMALL_SWEEPS, TINY, copy_of
from pipelines.orchestration import demo
from pipelines.orchestration import profile
from pipelines.claims.spec import load_claims
from pipelines.params import parse_params


def test_venv_dvc_runs_the_stages_without_activating_the_venv(small_run, tmp_path):
    """`.venv/bin/dvc repro` with only the system's directories on PATH: the stages' `python` is the venv's (the
    wrapper `make install` writes), not the system's python without torch, or none."""
    dvc = Path(sys.executable).parent / "dvc"
    assert dvc.read_text().startswith("#!/bin/sh"), f"{dvc} is pip's script, not the wrapper: run `make install`"
    repo = copy_of(small_run, tmp_path / "repo")
    proc = subprocess.run([str(dvc), "repro", "-f", "validate"], cwd=repo, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Running stage 'validate'" in proc.stdout and "params.yaml: ok; claims.yaml: ok" in proc.stdout


def test_the_demo_budgets_are_the_suites_tiny_run(small_run, tmp_path):
    """`make demo` and the suite's end-to-end fixtures build from the same file, so the demo runs every stage the
    suite checks: conftest's budgets are the demo's, and the params.yaml the demo writes (demo.main's call) is, byte
    for byte, the one the suite's built checkout ran."""
    tiny, one_cell_each = demo.budgets()
    assert (TINY, SMALL_SWEEPS) == (tiny, one_cell_each)
    profile.write_params(tmp_path, *demo.budgets())
    assert (tmp_path / "params.yaml").read_text() == (small_run / "params.yaml").read_text()
    assert set(one_cell_each) == {"ddgan", "sweep", "guided_sweep", "exact_sweep"}
    assert tiny["train_ddpm"]["steps"] < 100 and tiny["sample"]["n"] <= 500


def test_the_demo_never_replaces_a_folder_it_did_not_make(tmp_path):
    mine = tmp_path / "results"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    proc = subprocess.run([sys.executable, "-m", "pipelines.orchestration.demo", str(mine)], cwd=ROOT, capture_output=True,
                          text=True)
    assert proc.returncode == 2 and proc.stderr == f"error: {mine} exists and is not a previous demo; name another " \
                                                   "folder\n"
    assert (mine / "notes.txt").read_text() == "keep"


@pytest.mark.parametrize("name", ["demo", "mnist", "mnist-gpu", "cifar10", "swissroll"])
def test_every_profile_passes_the_one_loader_and_its_claims_read_its_own_rows(name):
    """A profile is params.yaml plus its overlay, checked by pipelines/params/ like any params file; its claims
    file declares rows that are cells of the profile (so its claims can be measured)."""
    doc = profile.load_profile(name)
    params = parse_params(profile.profile_params(doc), name)
    if "claims" in doc:
        rows = set(load_claims(ROOT / doc["claims"]).rows) - {"data"}
        assert rows <= set(params.cells()), sorted(rows - set(params.cells()))
