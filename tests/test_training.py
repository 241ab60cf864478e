"""Training pieces: L_simple, LR schedule, EMA, and checkpoints that resume exactly."""

import io
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from components.networks import make_network
from components.schedules import make_schedule
from components.training import TrainState, checkpoint, ema_update, lr_at, restore, train_step

from conftest import run, stage_env, write_params, TINY

SCHED = make_schedule("linear", 100)
DATA = torch.randn(512, 2)


def fresh_state(seed=0):
    torch.manual_seed(seed)
    return TrainState.create(make_network("mlp", (2,), width=16, depth=1, temb_dim=8), lr=1e-2, seed=seed)


def steps(state, n):
    for _ in range(n):
        train_step(state, SCHED, DATA, batch_size=32, lr=1e-2, grad_clip=1.0, ema_decay=0.9)


def test_lr_schedule():
    kw = dict(lr=1.0, warmup_steps=10, total_steps=110)
    assert lr_at(0, schedule="cosine", **kw) == pytest.approx(0.1)
    assert lr_at(9, schedule="cosine", **kw) == pytest.approx(1.0)
    assert lr_at(60, schedule="cosine", **kw) == pytest.approx(0.5)
    assert lr_at(110, schedule="cosine", **kw) == pytest.approx(0.0)
    assert lr_at(60, schedule="constant", **kw) == 1.0


def test_ema_update_is_a_convex_step():
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    before = a.weight.detach().clone()
    ema_update(a, b, 0.75)
    assert torch.allclose(a.weight, 0.75 * before + 0.25 * b.weight)


def test_training_lowers_the_loss():
    state = fresh_state()
    first = train_step(state, SCHED, DATA, batch_size=256, lr=1e-2, grad_clip=1.0, ema_decay=0.9)["loss"]
    steps(state, 200)
    last = sum(train_step(state, SCHED, DATA, batch_size=256, lr=1e-2, grad_clip=1.0, ema_decay=0.9)["loss"]
               for _ in range(10)) / 10
    assert last < 0.8 * first


def test_checkpoint_loads_weights_only_and_resumes_bit_for_bit():
    straight = fresh_state()
    steps(straight, 20)

    interrupted = fresh_state()
    steps(interrupted, 10)
    buf = io.BytesIO()
    torch.save(checkpoint(interrupted, {"note": "cfg"}, {"loss": [1.0, 0.5]}), buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    resumed = fresh_state(seed=123)  # different init and RNG: everything must come from the checkpoint
    assert restore(resumed, ckpt) == {"loss": [1.0, 0.5]}
    assert resumed.step == 10 and ckpt["config"] == {"note": "cfg"}
    steps(resumed, 10)
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(straight.ema.state_dict().values(), resumed.ema.state_dict().values()):
        assert torch.equal(a, b)


def test_killed_stage_resumes_to_the_same_checkpoint(tiny_repo):
    """SIGKILL train_ddpm mid-run; the rerun resumes from <ckpt>.partial and ends where an unbroken run ends."""
    write_params(tiny_repo, {**TINY, "train_ddpm": {**TINY["train_ddpm"], "steps": 1500, "checkpoint_every": 100,
                                                  "log_every": 50}})
    run([sys.executable, "-m", "pipelines.prepare", "data/train.npz", "data/reference.npz"], tiny_repo)
    cmd = [sys.executable, "-m", "pipelines.train_ddpm", "data/train.npz"]
    outs = ["models/a.pt", "plots/a.csv", "plots/a.png"]
    env = stage_env(MLFLOW_TRACKING_URI=f"sqlite:///{tiny_repo}/mlflow.db")
    proc = subprocess.Popen(cmd + outs, cwd=tiny_repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    partial = tiny_repo / "models/a.pt.partial"
    deadline = time.time() + 120
    while not partial.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert partial.exists() and not (tiny_repo / "models/a.pt").exists(), "the kill came too late to test resuming"

    resumed = run(cmd + outs, tiny_repo)
    assert "resuming from models/a.pt.partial at step" in resumed.stdout
    assert not partial.exists()
    run(cmd + ["models/b.pt", "plots/b.csv", "plots/b.png"], tiny_repo)
    a = torch.load(tiny_repo / "models/a.pt", weights_only=True)
    b = torch.load(tiny_repo / "models/b.pt", weights_only=True)
    assert a["step"] == b["step"] == 1500
    for k in a["ema"]:
        assert torch.equal(a["ema"][k], b["ema"][k]), k
    assert (tiny_repo / "plots/a.csv").read_text() == (tiny_repo / "plots/b.csv").read_text()
