"""Shared fixtures: a tiny-budget copy of the repository that DVC can run in seconds."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines import demo
from pipelines.demo import budgets

ROOT = Path(__file__).resolve().parents[1]

# demo.yaml: budgets that shrink the default run to seconds while keeping every stage and cell (TINY), and the
# sections that leave one cell of each kind (SMALL_SWEEPS): every stage module of the DAG, built in about two minutes.
TINY, SMALL_SWEEPS = budgets(ROOT)


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


def edited(doc, path: list, value):
    """A deep copy of `doc` (a parsed YAML document) with the entry at `path` (keys and list indices) set to `value`,
    or removed where value is None."""
    out = copy.deepcopy(doc)
    *parents, leaf = path
    node = out
    for p in parents:
        node = node[p]
    if value is None:
        del node[leaf]
    else:
        node[leaf] = value
    return out


def write_params(repo: Path, overrides: dict, replace: dict | None = None) -> None:
    """The default params with `overrides` merged in and the sections of `replace` replaced whole."""
    demo.write_params(repo, overrides, replace, ROOT)


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
    demo.scratch_copy(repo, ROOT)
    write_params(repo, TINY)
    demo.commit(repo, "init")
    return repo
