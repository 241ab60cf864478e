"""Data parallelism (components/training/parallel.py) on real gloo process groups of two CPU ranks.

The invariant: the mean of the gradients of two half-batch mean losses is the gradient of the whole batch's mean
loss, so two ranks that draw the global batch from one seeded stream and each train on its half stay equal to each
other bit for bit and agree with one process on the whole batch to float tolerance, for every trainer's step.
One `torch.multiprocessing.spawn` of two ranks (about ten seconds) computes everything the tests below compare.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from components.math.schedules import make_schedule
from components.networks.mlp import make_classifier, make_discriminator, make_generator, make_network
from components.scoring.evaluator import LeNet, evaluator_train_step
from components.training.ddgan import ddgan_train_step
from components.training.parallel import Replicas
from components.training.state import TrainState
from components.training.steps import (
    LossSecondMomentTimesteps, bound_train_step, classifier_train_step, hybrid_train_step, train_step,
)

WORLD, B, STEPS = 2, 32, 6
SCHED = make_schedule("linear", 50)
TOL = dict(rtol=1e-5, atol=1e-6)


def _data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator(device="cpu").manual_seed(0)
    points, labels = torch.randn(256, 2, generator=g, device="cpu"), torch.randint(5, (256,), generator=g, device="cpu")
    digits = torch.rand(64, 1, 28, 28, generator=g, device="cpu") * 2 - 1
    return points, labels, digits, torch.randint(10, (64,), generator=g, device="cpu")


def _mlp(out_mult: int = 1) -> torch.nn.Module:
    torch.manual_seed(0)
    return make_network("mlp", (2,), width=16, depth=2, temb_dim=8, out_mult=out_mult)


def train_all(replicas: Replicas) -> dict:
    """STEPS of every trainer's step at global batch B, as this rank of `replicas`: the final weights and RNG."""
    points, labels, digits, digit_labels = _data()
    kw = dict(batch_size=B, lr=1e-2, grad_clip=1.0, ema_decay=0.9)
    out = {}

    def run(name, state, step, extra=None):
        for _ in range(STEPS):
            step(state)
        out[name] = {"model": state.model.state_dict(), "ema": state.ema.state_dict(),
                     "rng": state.generator.get_state(), **(extra() if extra else {})}

    run("ddpm", TrainState.create(_mlp(), 1e-2, 0, replicas=replicas),
        lambda s: train_step(s, SCHED, points, **kw))
    sampler = LossSecondMomentTimesteps(len(SCHED), history=1)
    full = {"losses": torch.linspace(0.1, 1.0, len(SCHED), dtype=torch.float64, device="cpu")[:, None].numpy(),
            "counts": np.ones(len(SCHED), dtype=np.int64)}
    sampler.load_state_dict({k: torch.from_numpy(v) for k, v in full.items()})  # importance sampling from step 0
    run("iddpm", TrainState.create(_mlp(2), 1e-2, 0, replicas=replicas),
        lambda s: hybrid_train_step(s, SCHED, points, sampler, lambda_vlb=0.001, decoder="continuous", **kw),
        lambda: {"sampler": sampler.state_dict()})
    bound = LossSecondMomentTimesteps(len(SCHED), history=1)
    run("sd2015", TrainState.create(_mlp(2), 1e-2, 0, replicas=replicas),
        lambda s: bound_train_step(s, SCHED, points, bound, output="sd2015", decoder="continuous", **kw))
    torch.manual_seed(0)
    run("classifier", TrainState.create(make_classifier("mlp", (2,), 5, width=16, depth=1, temb_dim=8), 1e-2, 0,
                                        replicas=replicas),
        lambda s: classifier_train_step(s, SCHED, points, labels, **kw))
    torch.manual_seed(0)
    run("evaluator", TrainState.create(LeNet(channels=(4, 8), features=16), 1e-2, 0, replicas=replicas),
        lambda s: evaluator_train_step(s, digits, digit_labels, **kw))
    torch.manual_seed(0)
    G = make_generator("mlp", (2,), nz=4, width=16, depth=1, temb_dim=8, zemb_dim=8, mapping_depth=1)
    D = make_discriminator("mlp", (2,), width=16, depth=1, temb_dim=8, fourier_octaves=2)
    gan = TrainState.create({"G": G, "D": D}, 1e-3, 0, betas=(0.5, 0.9), replicas=replicas)
    run("ddgan", gan, lambda s: ddgan_train_step(s, make_schedule("ddgan_vp", 4), points, batch_size=B, lr_g=1e-3,
                                                 lr_d=1e-3, r1_gamma=0.1, r1_every=3, ema_decay=0.9),
        lambda: {"D": gan.nets["D"].state_dict()})
    return out


def collectives(replicas: Replicas) -> dict:
    """broadcast_, average_gradients_, gather and the NaN-aware mean, each on this rank's own inputs."""
    torch.manual_seed(replicas.rank)  # other initial weights on every rank: broadcast_ must give rank 0's
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    replicas.broadcast_(net)
    g = torch.Generator(device="cpu").manual_seed(7)  # the same batch on every rank
    x, y = torch.randn(B, 3, generator=g, device="cpu"), torch.randn(B, 1, generator=g, device="cpu")
    xs, ys = replicas.share(x, y)
    (net(xs) - ys).pow(2).mean().backward()
    replicas.average_gradients_(net.parameters())
    metrics = torch.tensor([1.0 + replicas.rank, float("nan") if replicas.rank else 5.0, float("nan")],
                           dtype=torch.float64, device="cpu")
    return {"weights": {k: v.clone() for k, v in net.state_dict().items()},
            "grads": [p.grad.clone() for p in net.parameters()], "x": x, "y": y,
            "gathered": replicas.gather(torch.arange(4, device="cpu") + 4 * replicas.rank),
            "mean": replicas.mean(metrics)}


def _rank(rank: int, port: int, folder: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    replicas = Replicas(rank, WORLD)
    torch.save({"collectives": collectives(replicas), "train": train_all(replicas)}, Path(folder, f"{rank}.pt"))
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    """What each of two gloo ranks computed."""
    folder = tmp_path_factory.mktemp("ranks")
    torch.multiprocessing.spawn(_rank, args=(_free_port(), str(folder)), nprocs=WORLD)
    return [torch.load(folder / f"{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.fixture(scope="module")
def one_process() -> dict:
    return train_all(Replicas())


def test_the_shares_of_two_ranks_cover_the_batch_in_order():
    x, t = torch.arange(12, device="cpu").reshape(6, 2), torch.arange(6, device="cpu")
    halves = [Replicas(r, 2).share(x, t) for r in range(2)]
    assert torch.equal(torch.cat([h[0] for h in halves]), x) and torch.equal(torch.cat([h[1] for h in halves]), t)
    assert Replicas().share(x, t)[0] is x  # one process: the tensors themselves
    with pytest.raises(ValueError, match="does not split into 4"):
        Replicas(0, 4).share(x)
    with pytest.raises(ValueError, match="rank 2 is not among the 2 ranks"):
        Replicas(2, 2)


def test_two_half_batch_gradients_average_to_the_full_batch_gradient(ranks):
    a, b = (r["collectives"] for r in ranks)
    for key, w in a["weights"].items():
        assert torch.equal(w, b["weights"][key]), f"{key}: broadcast_ did not give rank 0's weights"
    torch.manual_seed(0)  # rank 0's network, its whole-batch gradient in one process
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    net.load_state_dict(a["weights"])
    (net(a["x"]) - a["y"]).pow(2).mean().backward()
    for full, ga, gb in zip((p.grad for p in net.parameters()), a["grads"], b["grads"]):
        assert torch.equal(ga, gb)  # every rank holds the same averaged gradient
        assert torch.allclose(ga, full, **TOL), (ga - full).abs().max()


def test_gather_and_the_nan_aware_mean(ranks):
    for r in ranks:
        assert torch.equal(r["collectives"]["gathered"], torch.arange(8, device="cpu"))
        mean = r["collectives"]["mean"]
        assert mean[0] == 1.5 and mean[1] == 5.0 and mean[2].isnan()


@pytest.mark.parametrize("trainer", ["ddpm", "iddpm", "sd2015", "classifier", "evaluator", "ddgan"])
def test_two_ranks_train_as_one_process_on_the_whole_batch(ranks, one_process, trainer):
    """Both ranks hold the same weights and RNG state, bit for bit; the one process's weights to float tolerance,
    and its RNG state exactly (every rank drew the whole batch)."""
    a, b, one = ranks[0]["train"][trainer], ranks[1]["train"][trainer], one_process[trainer]
    worst = 0.0
    for part in ("model", "ema", "D"):
        if part not in one:
            continue
        for key, w in one[part].items():
            assert torch.equal(a[part][key], b[part][key]), f"{trainer} {part}.{key}: the ranks differ"
            worst = max(worst, (a[part][key] - w).abs().max().item())
            assert torch.allclose(a[part][key], w, **TOL), f"{trainer} {part}.{key}"
    assert torch.equal(a["rng"], one["rng"]) and torch.equal(b["rng"], one["rng"])
    if "sampler" in one:  # iDDPM's loss history saw the whole batch on every rank
        for key in ("losses", "counts"):
            np.testing.assert_allclose(a["sampler"][key].numpy(), one["sampler"][key].numpy(), rtol=1e-5, atol=1e-7)
    print(f"{trainer}: max |2 ranks - 1 process| = {worst:.3g}")
