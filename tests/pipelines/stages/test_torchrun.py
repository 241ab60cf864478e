"""Training stages as torchrun ranks (params runtime.processes; pipelines/plumbing/distributed.py), run as dvc.yaml
runs them, `python -m pipelines.stages.train_ddpm ...`, in small workspaces on this CPU (gloo).

Two ranks at global batch B end within float tolerance of one process at batch B (the mean of two half-batch
gradients is the whole batch's), on the toy's MLP and on a tiny UNet; a killed rank fails the stage in one line and
leaves the last resume checkpoint, from which a rerun finishes with the bytes of an unbroken two-rank run; one
process starts no process group; too many ranks for the machine fail in one line before any rank starts.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
import torch.distributed as dist
import yaml

from components.training.parallel import Replicas
from conftest import ROOT, stage_env
from pipelines.orchestration.profile import load_profile, profile_params
from pipelines.plumbing import distributed

pytestmark = pytest.mark.e2e

ARGV = ["data/train.npz", "models/ddpm.pt", "plots/loss.csv", "plots/loss.png"]
TOY = {"data": {"n_train": 2000, "n_reference": 2000},
       "train_ddpm": {"steps": 200, "batch_size": 64, "warmup_steps": 10, "log_every": 10, "checkpoint_every": 20,
                      "network": {"name": "mlp", "width": 32, "depth": 2, "temb_dim": 16}}}
TINY_IMAGES = yaml.safe_load((ROOT / "profiles/overlays/tiny-images.yaml").read_text())
UNET = {"train_ddpm": {"steps": 6, "batch_size": 8, "warmup_steps": 2, "log_every": 2, "checkpoint_every": 2}}
TOL = dict(rtol=1e-5, atol=1e-6)
# Adam divides each gradient by its running RMS, so a gradient that is zero in exact arithmetic moves its weight by
# about lr a step in float noise, differently in the two runs: the key bias of the UNet's attention (softmax ignores a
# shift shared by all keys) ends ~1e-5 apart after 6 steps at lr 3e-4; every other weight agrees to TOL.
UNET_TOL = dict(rtol=1e-4, atol=1e-5)


def merged(base: dict, over: dict) -> dict:
    return {**base, **{k: merged(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
                       for k, v in over.items()}}


def prepared(folder: Path, params: dict) -> Path:
    """A workspace: params.yaml and the prepared splits."""
    folder.mkdir(parents=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run([sys.executable, "-m", "pipelines.stages.prepare", "data/train.npz", "data/reference.npz"],
                   cwd=folder, env=stage_env(PYTHONPATH=str(ROOT)), check=True, capture_output=True, timeout=300)
    return folder


def with_processes(ws: Path, folder: Path, processes: int, **sections) -> Path:
    """A copy of workspace `ws` (its data, no outputs) with runtime.processes and `sections` merged into its params."""
    folder.mkdir(parents=True)
    shutil.copytree(ws / "data", folder / "data")
    params = merged(yaml.safe_load((ws / "params.yaml").read_text()), {"runtime": {"processes": processes}, **sections})
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return folder


def start(ws: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipelines.stages.train_ddpm", *ARGV], cwd=ws, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=stage_env(PYTHONPATH=str(ROOT), DVC_STAGE="train_ddpm"))


def train(ws: Path) -> subprocess.CompletedProcess:
    proc = start(ws)
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return prepared(tmp_path_factory.mktemp("toy") / "ws", merged(yaml.safe_load((ROOT / "params.yaml").read_text()),
                                                                 TOY))


@pytest.fixture(scope="module")
def unbroken(toy, tmp_path_factory) -> dict[int, Path]:
    """train_ddpm on the toy as one process and as two ranks, both at the same global batch: processes -> workspace."""
    out = {}
    for n in (1, 2):
        ws = with_processes(toy, tmp_path_factory.mktemp(f"p{n}") / "ws", n)
        proc = train(ws)
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr == "", proc.stderr  # no warning from the launcher, the ranks or gloo
        assert len(re.findall(r"^train_ddpm: 200 steps", proc.stdout, re.M)) == 1, proc.stdout  # rank 0 alone prints
        out[n] = ws
    return out


def assert_close(one: dict, two: dict, what: str, tol: dict) -> None:
    """Every weight of the two checkpoints within `tol`; prints the largest difference."""
    worst = (0.0, "")
    for part in ("model", "ema"):
        for key, w in one[part].items():
            worst = max(worst, ((two[part][key] - w).abs().max().item(), f"{part}.{key}"))
            assert torch.allclose(two[part][key], w, **tol), f"{what}: {part}.{key}"
    print(f"\n{what}: max |2 ranks - 1 process| = {worst[0]:.3g} ({worst[1]}) after {one['step']} steps")


def test_two_ranks_train_the_toy_as_one_process_to_float_tolerance(unbroken):
    one, two = (torch.load(unbroken[n] / "models/ddpm.pt", weights_only=True) for n in (1, 2))
    assert_close(one, two, "toy MLP", TOL)
    assert torch.equal(one["rng"], two["rng"]) and one["step"] == two["step"] == 200  # every rank drew every batch
    assert "processes" not in one["config"] and two["config"]["processes"] == 2  # one process keeps its bytes
    assert {k: v for k, v in two["config"].items() if k != "processes"} == one["config"]
    assert torch.allclose(one["history"]["loss"], two["history"]["loss"], rtol=1e-4)  # means over the ranks' shares
    assert not (unbroken[2] / "models/ddpm.pt.partial").exists()


def test_two_ranks_train_a_tiny_unet_as_one_process_to_float_tolerance(tmp_path):
    params = profile_params(load_profile("mnist"), overlay=TINY_IMAGES)
    ws = prepared(tmp_path / "ws", merged(params, {"data": {"n_train": 64, "n_reference": 32}, **UNET}))
    runs = {}
    for n in (1, 2):
        proc = train(with_processes(ws, tmp_path / f"p{n}", n))
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
        runs[n] = torch.load(tmp_path / f"p{n}/models/ddpm.pt", weights_only=True)
    assert runs[1]["config"]["network"]["name"] == "unet"
    assert_close(runs[1], runs[2], "tiny UNet", UNET_TOL)


def _rank_process(proc: subprocess.Popen, rank: int) -> psutil.Process | None:
    """The stage's rank `rank`, among the launcher's descendants (RANK in its environment)."""
    for child in psutil.Process(proc.pid).children(recursive=True):
        try:
            if child.environ().get("RANK") == str(rank):
                return child
        except psutil.Error:
            continue
    return None


def test_a_killed_rank_fails_the_stage_in_one_line_and_a_rerun_resumes_to_the_unbroken_bytes(unbroken, toy,
                                                                                             tmp_path):
    ws = with_processes(toy, tmp_path / "ws", 2)
    partial = ws / "models/ddpm.pt.partial"
    proc = start(ws)
    deadline = time.time() + 120
    while not partial.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    victim = _rank_process(proc, 1)
    assert victim is not None and partial.exists(), "no resume checkpoint before the run ended"
    victim.kill()  # SIGKILL
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    (line,) = err.strip().splitlines()
    found = re.fullmatch(r"error: train_ddpm: rank 1 of 2 died \(SIGKILL\); the other ranks were stopped; last "
                         r"checkpoint models/ddpm\.pt\.partial \(step (\d+)\) kept: rerun to resume", line)
    assert found, line
    kept = torch.load(partial, weights_only=True)
    assert kept["step"] == int(found.group(1)) < 200 and not (ws / "models/ddpm.pt").exists()
    assert not [p for p in psutil.Process().children(recursive=True) if "pipelines.stages" in " ".join(p.cmdline())]

    rerun = train(ws)
    assert rerun.returncode == 0, rerun.stderr
    assert f"train_ddpm: resuming from models/ddpm.pt.partial at step {kept['step']}" in rerun.stdout
    for out in ARGV[1:3]:
        assert md5(ws / out) == md5(unbroken[2] / out), out
    assert not partial.exists() and not list(ws.rglob(".*.tmp"))


def test_a_resume_checkpoint_of_other_ranks_is_not_resumed(unbroken, toy, tmp_path):
    """The config records the number of ranks: a two-rank `.partial` does not resume a one-process run (nor the
    reverse), which starts afresh and ends with the one-process bytes."""
    ws = with_processes(toy, tmp_path / "ws", 1)
    (ws / "models").mkdir()
    shutil.copy(unbroken[2] / "models/ddpm.pt", ws / "models/ddpm.pt.partial")  # two ranks' state at step 200
    proc = train(ws)
    assert proc.returncode == 0, proc.stderr
    assert "train_ddpm: models/ddpm.pt.partial was made with other params or data; starting afresh" in proc.stdout
    assert md5(ws / "models/ddpm.pt") == md5(unbroken[1] / "models/ddpm.pt")


def test_a_one_line_error_of_the_ranks_is_printed_once(toy, tmp_path):
    """A run that diverges on two ranks stops on both at the same read; rank 0 alone says so, in one line."""
    proc = train(with_processes(toy, tmp_path / "ws", 2, train_ddpm={"lr": 1e30}))
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert re.fullmatch(r"error: train_ddpm: loss is (nan|inf) at step \d+: training diverged, nothing written; .*",
                        line), line


def test_more_ranks_than_cores_fail_in_one_line_before_any_rank_starts(toy, tmp_path):
    cores = len(os.sched_getaffinity(0))
    n = 1 << cores.bit_length()  # a power of two above the cores, so the batch sizes divide by it
    ws = with_processes(toy, tmp_path / "ws", n, train_ddpm={"batch_size": 64 * n})
    proc = train(ws)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        f"error: runtime.processes: {n} ranks on the CPU, but this machine gives the run {cores} "
        f"core{'s' if cores > 1 else ''}; use at most {cores}"]
    assert not (ws / "models").exists()


def test_one_process_runs_main_in_this_process_with_no_process_group(toy, monkeypatch):
    monkeypatch.chdir(toy)
    seen = []

    def main(argv: list[str]) -> None:
        seen.append((argv, dist.is_initialized(), distributed.stage_replicas(), distributed.local_rank()))

    distributed.run_trainer(main, ARGV, checkpoint=lambda argv: pytest.fail("one process needs no checkpoint path"))
    assert seen == [(ARGV, False, Replicas(), 0)]
