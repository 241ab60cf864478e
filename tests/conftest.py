"""Shared fixtures: a tiny-budget copy of the repository that DVC can run in seconds."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipelines import profile
from pipelines.demo import budgets

ROOT = Path(__file__).resolve().parents[1]

# profiles/demo.yaml: budgets that shrink the default run to seconds while keeping every stage and cell (TINY), and the
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
    profile.write_params(repo, overrides, replace, ROOT)


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
    profile.scratch_copy(repo, ROOT)
    write_params(repo, TINY)
    profile.commit(repo, "init")
    return repo


def write_cifar10_batches(folder: Path, n: int = 20, seed: int = 0) -> dict[str, dict]:
    """Fake data_batch_1..5 and test_batch in `folder`, n images each, in the exact format of CIFAR-10's python
    version (protocol-2 pickles of bytes-keyed dicts: uint8 data (n, 3072), a list of int labels, bytes names)."""
    import pickle

    from components.cifar10 import PIXELS, TEST_BATCH, TRAIN_BATCHES

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    batches = {name: {b"batch_label": f"batch {i} of 6".encode(), b"labels": [int(v) for v in rng.integers(0, 10, n)],
                      b"data": rng.integers(0, 256, (n, PIXELS), dtype=np.uint8),
                      b"filenames": [f"img_{i}_{k}.png".encode() for k in range(n)]}
               for i, name in enumerate((*TRAIN_BATCHES, TEST_BATCH))}
    for name, batch in batches.items():
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    return batches


def write_random_inception_weights(path: Path, seed: int = 0) -> Path:
    """A randomly initialised InceptionV3 state dict in the format of torch-fidelity's weights file (nothing can be
    downloaded here): a torch.save'd dict of float32 tensors under the module's names, without BatchNorm's
    num_batches_tracked (as its converter writes it)."""
    import torch
    import torch_fidelity.feature_extractor_inceptionv3 as tfi

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tfi, "load_state_dict_from_url", lambda *a, **k: {})  # no download: nothing to load
        mp.setattr(tfi.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
        torch.manual_seed(seed)
        net = tfi.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}, path)
    return path
