"""Nothing in a training step or a sampler's loop waits for the device: no value is read back to the host.

On a GPU every `.item()`, `float(t)`, `if t:` or `.cpu()` stalls the host until the device's queue drains, so
a step that reads one value runs at the speed of the round trip. These tests catch such reads on a CPU:
`HostReads` is a TorchFunctionMode, which sees every tensor method call (`item`, `tolist`, `cpu`, `numpy`,
`__bool__`, `__float__`, `__int__`, `__index__`), and it records those made from this repository's own code (the
frame that made the call is in components/ or pipelines/). Reads inside torch itself (CPU Adam reads its step
counter; fused CUDA Adam does not) are torch's business, not ours.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

from components.training.ddgan import ddgan_train_step
from components.scoring.evaluator import LeNet, evaluator_train_step
from components.networks.mlp import make_classifier, make_discriminator, make_generator, make_network
from components.math.diffusion import ReverseModel
from components.sampling.samplers import GANGenerator, sample_ddgan, sample_ddim, sample_ddpm
from components.math.schedules import make_schedule, make_trajectory, respace
from components.training.state import TrainState
from components.training.steps import (
    UniformTimesteps, bound_train_step, classifier_train_step, hybrid_train_step, train_step,
)
from conftest import ROOT
from pipelines.params.training import OptimParams
from pipelines.stages.trainer import train_loop

HOST_READS = {"item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__"}
OURS = (str(ROOT / "components"), str(ROOT / "pipelines"))


class HostReads(TorchFunctionMode):
    """Records (file:line, method) of every host read made directly by the project's code."""

    def __init__(self):
        super().__init__()
        self.reads: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in HOST_READS:
            caller = sys._getframe(1)
            if caller.f_code.co_filename.startswith(OURS):
                where = Path(caller.f_code.co_filename).relative_to(ROOT)
                self.reads.append(f"{where}:{caller.f_lineno} {name}")
        return func(*args, **(kwargs or {}))


def reads_of(fn, *args, **kwargs) -> list[str]:
    with HostReads() as mode:
        fn(*args, **kwargs)
    return mode.reads


SCHED = make_schedule("linear", 50)
POINTS = torch.randn(256, 2, generator=torch.Generator(device="cpu").manual_seed(0), device="cpu")
IMAGES = torch.randn(64, 1, 28, 28, generator=torch.Generator(device="cpu").manual_seed(0), device="cpu")
LABELS = torch.randint(10, (256,), generator=torch.Generator(device="cpu").manual_seed(1), device="cpu")
STEP = {"batch_size": 16, "lr": 1e-3, "grad_clip": 1.0, "ema_decay": 0.9}


def mlp(out_mult=1):
    torch.manual_seed(0)
    return TrainState.create(make_network("mlp", (2,), width=16, depth=1, temb_dim=8, out_mult=out_mult), 1e-3, 0)


def test_the_recorder_sees_a_read_made_in_the_project():
    """The check can fail: the pre-issue optimizer_step's `loss.item()` and the trainer's `math.isfinite`, as written
    in components/ (this test file's reads are not the project's, so it fakes the caller's file)."""
    src = "def read(loss):\n    import math\n    return loss.item(), math.isfinite(loss), bool(loss > 0)\n"
    code = compile(src, str(ROOT / "components" / "training" / "steps.py"), "exec")
    space: dict = {}
    exec(code, space)
    reads = reads_of(space["read"], torch.tensor(1.0))
    assert [r.split()[-1] for r in reads] == ["item", "__float__", "__bool__"]
    assert all(r.startswith("components/training/steps.py:") for r in reads)


@pytest.mark.parametrize("kind", ["ddpm", "hybrid", "bound", "classifier", "ddgan", "evaluator"])
def test_a_training_step_reads_nothing_back(kind):
    """Every trainer's step (DDPM's L_simple, iDDPM's L_hybrid, the 2015 bound, ADM's classifier, DDGAN, the digit
    classifier) leaves its metrics on the device."""
    if kind == "ddpm":
        state = mlp()
        step = lambda: train_step(state, SCHED, POINTS, **STEP)  # noqa: E731
    elif kind == "hybrid":
        state = mlp(out_mult=2)
        step = lambda: hybrid_train_step(state, SCHED, POINTS, UniformTimesteps(len(SCHED)), lambda_vlb=1e-3,  # noqa
                                         decoder="continuous", **STEP)
    elif kind == "bound":
        state = mlp(out_mult=2)
        step = lambda: bound_train_step(state, SCHED, POINTS, UniformTimesteps(len(SCHED)), output="sd2015",  # noqa
                                        decoder="continuous", **STEP)
    elif kind == "classifier":
        torch.manual_seed(0)
        state = TrainState.create(make_classifier("mlp", (2,), 10, width=16, depth=1, temb_dim=8), 1e-3, 0,
                                  weight_decay=0.05)
        step = lambda: classifier_train_step(state, SCHED, POINTS, LABELS, **STEP)  # noqa: E731
    elif kind == "ddgan":
        torch.manual_seed(0)
        G = make_generator("mlp", (2,), nz=4, width=16, depth=1, temb_dim=8, zemb_dim=8, mapping_depth=1)
        D = make_discriminator("mlp", (2,), width=16, depth=1, temb_dim=8, fourier_octaves=2)
        state = TrainState.create({"G": G, "D": D}, 1e-3, 0, betas=(0.5, 0.9))
        sched = make_schedule("ddgan_vp", 4)
        step = lambda: ddgan_train_step(state, sched, POINTS, batch_size=16, lr_g=1e-3, lr_d=1e-3,  # noqa: E731
                                        r1_gamma=0.05, r1_every=1, ema_decay=0.9)
    else:
        torch.manual_seed(0)
        state = TrainState.create(LeNet(in_channels=1, n_classes=10, features=16), 1e-3, 0)
        step = lambda: evaluator_train_step(state, IMAGES, LABELS[:64], **STEP)  # noqa: E731
    step()  # first call: lazy state (Adam's moments) made
    assert reads_of(step) == []


def test_the_loop_reads_the_device_once_per_log_interval(tmp_path):
    """10 steps, log_every 5: the loop's own reads are two batched copies; the weight check before each save is
    the only other read."""
    state = mlp()
    p = OptimParams(seed=0, steps=10, batch_size=16, lr=1e-3, lr_schedule="constant", warmup_steps=0,
                    ema_decay=0.9, grad_clip=1.0, log_every=5, checkpoint_every=10)
    history = {"step": [], "loss": [], "grad_norm": [], "lr": []}
    with HostReads() as mode:
        train_loop("t", p, state, lambda lr: train_step(state, SCHED, POINTS, **{**STEP, "lr": lr}), history,
                   save=lambda path: None, partial=tmp_path / "x.partial")
    loop_reads = [r for r in mode.reads if r.startswith("pipelines/stages/trainer.py")]
    assert len(loop_reads) == 2 and all(r.endswith(" tolist") for r in loop_reads), mode.reads
    assert {r.split(":")[0] for r in mode.reads} <= {"pipelines/stages/trainer.py", "pipelines/plumbing/loading.py"}, mode.reads
    assert history["step"] == [5, 10] and len(history["grad_norm"]) == 2


@pytest.mark.parametrize("sampler", ["ddpm-small", "ddpm-large", "ddpm-learned", "ddim", "ddim-eta", "ddgan"])
def test_a_sampler_loop_reads_nothing_back(sampler):
    """DDPM (each variance), DDIM (eta 0 and 1) and DDGAN walk their chains without a host read: coefficients are
    gathered from tables already on the device, indices are Python ints."""
    g = torch.Generator(device="cpu").manual_seed(0)
    x_T = torch.randn(8, 2, generator=g, device="cpu")
    sched = respace(SCHED, make_trajectory("uniform", len(SCHED), 10))
    if sampler == "ddgan":
        torch.manual_seed(0)
        G = make_generator("mlp", (2,), nz=4, width=16, depth=1, temb_dim=8, zemb_dim=8, mapping_depth=1)
        assert reads_of(sample_ddgan, GANGenerator(G, G.nz), make_schedule("ddgan_vp", 4), x_T, generator=g) == []
        return
    net = ReverseModel(make_network("mlp", (2,), width=16, depth=1, temb_dim=8,
                                    out_mult=2 if sampler.endswith("learned") else 1))
    if sampler.startswith("ddpm"):
        call = lambda: sample_ddpm(net, sched, x_T, generator=g, variance=sampler.split("-")[1])  # noqa: E731
    else:
        call = lambda: sample_ddim(net, sched, x_T, generator=g, eta=1.0 if sampler == "ddim-eta" else 0.0)  # noqa
    assert reads_of(call) == []
