"""Stage plumbing that is not covered through the stages themselves."""

import os
import platform
import subprocess
import sys

import pytest
import torch

from pipelines.plumbing.atomic import atomic_torch_save, remove_stale_temporaries
from pipelines.plumbing.loading import first_nonfinite

from conftest import ROOT, stage_env


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_malloc_thresholds_pin_on_glibc_before_every_stage_computes():
    """Every stage pins glibc's malloc thresholds: entry_point calls pin_malloc_thresholds before the stage's main,
    and mallopt accepts all three settings here (it returns True)."""
    code = ("import pipelines.plumbing.entry as entry\n"
            "pinned = []\n"
            "real = entry.pin_malloc_thresholds\n"
            "entry.pin_malloc_thresholds = lambda: pinned.append(real()) or pinned[-1]\n"
            "entry.entry_point(lambda argv: print('pinned before main:', pinned))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=stage_env(PYTHONPATH=str(ROOT)),
                         capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[0] == "pinned before main: [True]", out


def test_equal_checkpoints_pickle_to_equal_bytes(tmp_path):
    """pickle writes an object seen twice as a back-reference: the same contents built from shared or from separate
    objects (a resumed run's config against an unbroken run's) must still give one file."""
    name = "".join(["ml", "p"])
    shared = {"network": {"name": name}, "train": {"name": name}, "w": torch.ones(3)}
    separate = {"network": {"name": "mlp"}, "train": {"name": "".join(["m", "lp"])}, "w": torch.ones(6)[:3]}
    atomic_torch_save(tmp_path / "a.pt", shared)
    atomic_torch_save(tmp_path / "b.pt", separate)
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
    net = torch.nn.Linear(2, 2)
    atomic_torch_save(tmp_path / "n.pt", {"model": net.state_dict()})
    loaded = torch.load(tmp_path / "n.pt", weights_only=True)["model"]
    assert loaded._metadata == net.state_dict()._metadata  # what load_state_dict reads to upgrade old formats
    torch.nn.Linear(2, 2).load_state_dict(loaded)


def test_temporaries_of_dead_writers_are_removed_at_the_next_start(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = [tmp_path / f".ddpm.pt.{dead}.abc123.tmp", tmp_path / f".ddpm.pt.partial.{dead}.x_y.tmp",
             tmp_path / ".ddpm.pt.q1w2e3.tmp"]  # the last: an older writer's, with no PID
    live = tmp_path / f".ddpm.pt.{os.getpid()}.abc123.tmp"  # a writer still running
    other = [tmp_path / f".iddpm.pt.{dead}.abc123.tmp", tmp_path / "ddpm.pt"]
    for p in [*stale, live, *other]:
        p.write_bytes(b"x")
    assert sorted(remove_stale_temporaries([str(tmp_path / "ddpm.pt"), "7", "no/such/dir/f"])) == sorted(stale)
    assert live.exists() and all(p.exists() for p in other)


def test_first_nonfinite_names_the_tensor():
    ckpt = {"ema": {"a": torch.ones(2), "b": torch.tensor([1.0, float("nan")])}, "rng": torch.zeros(3, dtype=torch.uint8),
            "opt": {"state": {0: {"step": torch.tensor(3.0)}}}}
    assert first_nonfinite(ckpt) == "ema.b"
    ckpt["ema"]["b"][1] = 0.0
    assert first_nonfinite(ckpt) is None
    ckpt["opt"]["state"][0]["exp_avg"] = torch.tensor([float("-inf")])
    assert first_nonfinite(ckpt) == "opt.state.0.exp_avg"
