"""Shared fixtures: a tiny-budget copy of the repository that DVC can run in seconds, each kind of checkout built once
per test run (across pytest-xdist's workers too), and the `e2e` marker that `make test-fast` leaves out."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from filelock import FileLock

from pipelines.orchestration import profile
from pipelines.orchestration.demo import budgets

ROOT = Path(__file__).resolve().parents[1]

# Under xdist, each worker and the stages it starts share the cores with the other workers: one torch thread per core
# each (a value the caller set wins), not every core each, whose spinning threads slow tiny stages many times over.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0))
                                                       // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))))

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


# The fixtures that hand a test a checkout (or a server) run DVC, Prefect or a stage's process: a test that asks for one
# is end to end (marked `e2e`) whatever its file says, so `make test-fast` (-m "not e2e") cannot drift into them.
E2E_FIXTURES = {"tiny_repo", "tiny_template", "small_run", "prefect_server"}
# Module-scoped fixtures that cost nothing to set up once per worker (an alias of small_run, a thread pin): their
# modules' tests spread over the workers; every other module-scoped fixture keeps its module on one worker.
CHEAP_MODULE_FIXTURES = {"built", "one_thread"}


def pytest_collection_modifyitems(config, items):
    """Marks `e2e` every test that uses a checkout fixture or carries the older `slow` mark; under xdist, keeps each
    module that has a module-scoped fixture on one worker (xdist_group), so such a fixture (a Prefect server, a trained
    evaluator, a traced DAG) is set up once, not once per worker."""
    for item in items:
        if E2E_FIXTURES & set(item.fixturenames) or item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.e2e)
        defs = getattr(item, "_fixtureinfo", None)
        if defs and any(d.scope == "module" and d.argname not in CHEAP_MODULE_FIXTURES
                        for fds in defs.name2fixturedefs.values() for d in fds):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))


def shared_dir(tmp_path_factory) -> Path:
    """The run's base temp folder, which every xdist worker of the run shares (a worker's own is one level down)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def built_once(tmp_path_factory, name: str, build: Callable[[Path], None]) -> Path:
    """Folder `name` in the shared temp folder, made by `build(folder)` once per test run: the first caller of any
    worker builds it under a file lock, later ones wait for the lock and read it. A failed build fails every later
    caller with its error instead of building again. Readers never change it: they copy it (`copy_of`)."""
    root = shared_dir(tmp_path_factory)
    folder, done, failed = root / name, root / f"{name}.built", root / f"{name}.failed"
    with FileLock(root / f"{name}.lock"):
        if failed.exists():
            raise AssertionError(f"the shared build {name} failed in another test:\n{failed.read_text()}")
        if not done.exists():
            try:
                build(folder)
            except BaseException as e:
                failed.write_text(f"{type(e).__name__}: {e}")
                raise
            done.touch()
    return folder


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """`prefect server start` on a free port of 127.0.0.1 with its own database, once for the module (it takes
    15-30 s to start); its environment for clients."""
    from servers import free_port, prefect_env, start, stop, wait_healthy

    tmp_path = tmp_path_factory.mktemp("prefect")
    port = free_port()
    env = prefect_env(tmp_path, port)
    proc = start(["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)], tmp_path,
                 tmp_path / "server.log", **env)
    try:
        wait_healthy(f"{env['PREFECT_API_URL']}/health", proc, tmp_path / "server.log")
        yield env
    finally:
        stop(proc)


@pytest.fixture(scope="session")
def tiny_template(tmp_path_factory) -> Path:
    """A git + DVC repository holding this project's tracked files and tiny params (TINY), nothing built; made once per
    test run. Read it, never change it: `tiny_repo` hands each test a copy."""
    return built_once(tmp_path_factory, "tiny_template", make_tiny_repo)


@pytest.fixture(scope="session")
def small_run(tiny_template, tmp_path_factory) -> Path:
    """One `dvc repro` of the tiny DAG with one cell of each kind (SMALL_SWEEPS), built once per test run.

    Shared by every test that reads a built checkout: read it, never change it; copy it (`copy_of`) to change things.
    """
    def build(repo: Path) -> None:
        copy_of(tiny_template, repo)
        write_params(repo, TINY, SMALL_SWEEPS)
        (repo / "dvc.lock").unlink()  # the full-size run's: its lock entries would name cells this DAG does not have
        run(["dvc", "repro"], repo)
        run([sys.executable, "-m", "pipelines.plumbing.tracking", "flush"], repo)  # every stage's MLflow run written

    return built_once(tmp_path_factory, "small_run", build)


def copy_of(built: Path, dst: Path) -> Path:
    """A copy of a built checkout (its DVC cache, lock and MLflow store included) to change."""
    shutil.copytree(built, dst, symlinks=True)
    return dst


@pytest.fixture
def tiny_repo(tiny_template, tmp_path: Path) -> Path:
    """A fresh git + DVC repository holding this project's tracked files and tiny params: a copy of `tiny_template`."""
    return copy_of(tiny_template, tmp_path / "repo")


def make_tiny_repo(repo: Path) -> Path:
    profile.scratch_copy(repo, ROOT)
    write_params(repo, TINY)
    profile.commit(repo, "init")
    return repo


def write_cifar10_batches(folder: Path, n: int = 20, seed: int = 0) -> dict[str, dict]:
    """Fake data_batch_1..5 and test_batch in `folder`, n images each, in the exact format of CIFAR-10's python
    version (protocol-2 pickles of bytes-keyed dicts: uint8 data (n, 3072), a list of int labels, bytes names)."""
    import pickle

    from components.data.cifar10 import PIXELS, TEST_BATCH, TRAIN_BATCHES

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
