"""Shared fixtures: a tiny-budget copy of the repository that DVC can run in seconds."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

# Overrides that shrink the default run to seconds while keeping every stage and cell.
TINY = {
    "data": {"n_train": 2000, "n_reference": 500},
    "train_ddpm": {"steps": 40, "batch_size": 128, "warmup_steps": 5, "log_every": 10, "checkpoint_every": 20,
                   "network": {"name": "mlp", "width": 32, "depth": 1, "temb_dim": 16}},
    "finetune_iddpm": {"steps": 30, "batch_size": 128, "warmup_steps": 5, "log_every": 10, "checkpoint_every": 10},
    "train_classifier": {"steps": 30, "batch_size": 128, "warmup_steps": 5, "log_every": 10, "checkpoint_every": 10,
                         "network": {"name": "mlp", "width": 16, "depth": 1, "temb_dim": 16}},
    "ddgan": {"T": [1, 4]},
    "train_ddgan": {"steps": 30, "batch_size": 64, "log_every": 10, "checkpoint_every": 10, "r1_every": 5,
                    "generator": {"name": "mlp", "nz": 4, "width": 16, "depth": 1, "temb_dim": 8, "zemb_dim": 8,
                                  "mapping_depth": 1, "fourier_octaves": 0},
                    "discriminator": {"name": "mlp", "width": 16, "depth": 1, "temb_dim": 8, "fourier_octaves": 2}},
    "sample": {"n": 500, "batch_size": 500},
    "timing": {"repeats": 2, "n": 50, "warmup": 1},
    "nll": {"n": 200, "batch_size": 100},
}


# The tiny budgets with one cell of each kind: every stage module of the DAG, built in about two minutes.
SMALL_SWEEPS = {
    "ddgan": {"T": [1, 2]},
    "sweep": {"ddpm-4": {"model": "ddpm", "sampler": "ddpm", "steps": 4, "variance": "small"},
              "iddpm-4": {"model": "iddpm", "sampler": "ddpm", "steps": 4, "variance": "learned"},
              "ddim-4": {"model": "ddpm", "sampler": "ddim", "steps": 4, "eta": 0.0}},
    "guided_sweep": {"ddim-4-s1": {"model": "ddpm", "sampler": "ddim", "steps": 4, "eta": 0.0, "scale": 1.0}},
    "exact_sweep": {"exact-ddim-4": {"sampler": "ddim", "steps": 4, "eta": 0.0}},
}


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) and k != "network" else v
    return out


def stage_env(**extra: str) -> dict[str, str]:
    """The environment a user's shell has after `make`: the venv's bin first on PATH, no inherited tracking."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def run(cmd: list[str], cwd: Path, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=stage_env(**env), capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def write_params(repo: Path, overrides: dict, replace: dict | None = None) -> None:
    """The default params with `overrides` merged in and the sections of `replace` replaced whole."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    (repo / "params.yaml").write_text(yaml.safe_dump({**_merge(params, overrides), **(replace or {})}, sort_keys=False))


@pytest.fixture(scope="session")
def small_run(tmp_path_factory) -> Path:
    """One `dvc repro` of the tiny DAG with one cell of each kind (SMALL_SWEEPS), built once per test run.

    Shared by every test that reads a built checkout: read it, never change it; copy it (`copy_of`) to change things.
    """
    repo = make_tiny_repo(tmp_path_factory.mktemp("small_run") / "repo")
    write_params(repo, TINY, SMALL_SWEEPS)
    (repo / "dvc.lock").unlink()  # the full-size run's: its lock entries would name cells this DAG does not have
    run(["dvc", "repro"], repo)
    run([sys.executable, "-m", "pipelines.tracking", "flush"], repo)  # every stage's MLflow run written
    return repo


def copy_of(built: Path, dst: Path) -> Path:
    """A copy of a built checkout (its DVC cache, lock and MLflow store included) to change."""
    shutil.copytree(built, dst, symlinks=True)
    return dst


@pytest.fixture
def tiny_repo(tmp_path: Path) -> Path:
    """A fresh git + DVC repository holding this project's tracked files and tiny params."""
    return make_tiny_repo(tmp_path / "repo")


def make_tiny_repo(repo: Path) -> Path:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for f in files:
        if (ROOT / f).is_file():
            (repo / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, repo / f)
    write_params(repo, TINY)
    run(["git", "init", "-q"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], repo)
    return repo
