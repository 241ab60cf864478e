"""The image tier end to end: the mnist and cifar10 profiles through `dvc repro` in temporary workspaces, at tiny
sizes (a tiny UNet, a few steps, a few samples), with a real DVC cache and a real MLflow store.

What these check: every stage of the image DAG runs and writes its row (FID, KID, precision/recall, classifier
score, bits/dim, the extractor's name and hash), profiles share DVC's cache (a second workspace restores every
stage from the run cache instead of rerunning it), and MLflow keeps the profiles' runs in experiments of their own.
The cifar10 profile reads fake CIFAR-10 batches written in the exact format and an Inception weights file of the
right architecture with random weights (nothing can be downloaded here).
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from components.scoring.evaluator import LeNet, to_model_space
from conftest import ROOT, stage_env, write_cifar10_batches, write_random_inception_weights

pytestmark = pytest.mark.e2e

# The profile's own params at test size (profiles/overlays/tiny-images.yaml, which benchmarks/gpu_check.py runs
# too).
TINY = yaml.safe_load((ROOT / "profiles/overlays/tiny-images.yaml").read_text())
TINY_IMAGES, SWEEP = TINY["merge"], TINY["replace"]["sweep"]


def overlay(path: Path, merge: dict, replace: dict | None = None) -> Path:
    """A profile overlay file: `merge` and `replace` (the tiny sweep unless `replace` names another)."""
    doc = {"merge": merge,
           "replace": {"sweep": SWEEP, **(replace or {})}}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def profile(name: str, tmp: Path, over: Path, ws: str = "ws", **env: str) -> subprocess.CompletedProcess:
    """`python -m pipelines.orchestration.profile <name>` into tmp/<ws>, with its own DVC cache and MLflow store under tmp."""
    cmd = [sys.executable, "-m", "pipelines.orchestration.profile", name, "--dir", str(tmp / ws), "--overlay", str(over),
           "--cache", str(tmp / "cache"), "--external", str(tmp / "external")]
    (tmp / "external").mkdir(exist_ok=True)
    return subprocess.run(cmd, cwd=ROOT, env=stage_env(MLFLOW_TRACKING_URI=f"sqlite:///{tmp / 'mlflow.db'}", **env),
                          capture_output=True, text=True, timeout=1200)


def table(ws: Path) -> pd.DataFrame:
    return pd.read_csv(ws / "metrics/trilemma.csv").set_index("cell")


def experiments(db: Path) -> dict[str, int]:
    """MLflow experiment name -> its number of runs, read from the sqlite store."""
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT e.name, COUNT(r.run_uuid) FROM experiments e LEFT JOIN runs r "
                           "ON r.experiment_id = e.experiment_id GROUP BY e.name").fetchall()
    return dict(rows)


def test_mnist_profile_runs_the_image_dag_and_a_second_workspace_restores_it_from_the_cache(tmp_path):
    over = overlay(tmp_path / "tiny.yaml", TINY_IMAGES)
    proc = profile("mnist", tmp_path, over)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ws = tmp_path / "ws"
    df = table(ws)
    cells = ["data", *SWEEP]
    rows = df.loc[cells]
    extractor = rows["extractor"].unique()
    assert len(extractor) == 1 and extractor[0].startswith("lenet-")  # one extractor, named with its weights' hash
    for col in ("fid", "kid", "kid_std", "precision", "recall", "classifier_score"):
        assert rows[col].notna().all(), col
    assert (rows["classifier_score"] >= 1).all() and (rows["classifier_score"] <= 10 + 1e-9).all()
    assert df.loc["ddpm-50", "n"] == 12 and df.loc["iddpm-10", "n"] == 24  # a cell's own sample count
    assert df.loc["ddim-quad-5", "trajectory"] == "quadratic"
    assert df.loc["ddgan-4", "nfe"] == 4 and pd.notna(df.loc["ddgan-4", "fid"])  # mnist's DDGAN row, image networks
    assert df.loc[["ddpm-50", "iddpm-10"], "nll"].notna().all() and pd.isna(df.loc["ddim-quad-5", "nll"])
    samples = dict(__import__("numpy").load(ws / "samples/iddpm-10.npz"))
    assert samples["x"].dtype.name == "uint8" and samples["x"].shape == (24, 1, 28, 28)
    assert (ws / "plots/samples/ddpm-50.png").stat().st_size > 1000  # the sample grid
    # The digit classifier's held-out accuracy: 0.23 in this tiny run (23 of its 100 reference digits after 20 steps,
    # measured on a 2-core CPU); chance, an evaluator that learned nothing, is 0.10 +- 0.03.
    assert json.loads((ws / "metrics/evaluator.json").read_text())["accuracy"] >= 0.18
    assert f"extractor {extractor[0]}" in (ws / "metrics/trilemma.md").read_text()  # the header names it too
    runs = experiments(tmp_path / "mlflow.db")
    assert runs.get("trilemma-mnist", 0) >= len(SWEEP) + 5 and "trilemma" not in runs  # kept apart by profile

    # A second workspace of the same profile shares the cache: DVC restores every stage instead of running it.
    again = profile("mnist", tmp_path, over, ws="ws2")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "Running stage" not in again.stdout, again.stdout
    assert again.stdout.count("is cached - skipping run") >= len(SWEEP) + 6
    assert table(tmp_path / "ws2").drop(columns=["wall_s_per_1k", "wall_s_per_1k_iqr"]).equals(
        df.drop(columns=["wall_s_per_1k", "wall_s_per_1k_iqr"]))


# mnist-conditional at test size: the tiny UNet for the 2015 model and the encoder classifier, one unguided DDIM
# cell with its s = 0 and s = 2 guided twins, the 2015 model's full chain.
TINY_UNET = TINY_IMAGES["train_ddpm"]["network"]
TINY_CONDITIONAL = {
    **TINY_IMAGES,
    "train_classifier": {"steps": 20, "batch_size": 16, "warmup_steps": 2, "log_every": 10, "checkpoint_every": 10,
                         "accuracy_buckets": 5, "network": {**TINY_UNET, "name": "unet"}},
    "train_sd2015": {"steps": 10, "batch_size": 16, "warmup_steps": 2, "log_every": 5, "checkpoint_every": 5,
                     "network": TINY_UNET},
}
GUIDED = {f"ddim-5-s{s}": {"model": "ddpm", "sampler": "ddim", "steps": 5, "eta": 0.0, "clip_x0": True, "scale": s}
          for s in (0, 2)}
CONDITIONAL_SWEEP = {"ddim-5": {"model": "ddpm", "sampler": "ddim", "steps": 5, "eta": 0.0, "clip_x0": True},
                     "sd2015-50": {"model": "sd2015", "sampler": "ddpm", "steps": 50, "variance": "learned", "n": 8},
                     **{f"ddpm-10-bottom-{rule}": {"model": "ddpm", "sampler": "ddpm", "steps": 10, "clip_x0": True,
                                                   "n": 8, "condition": {"factor": "inpaint", "mask": "bottom",
                                                                         "rule": rule}}
                        for rule in ("clamp", "noised")}}


def test_mnist_conditional_profile_guides_judged_by_the_evaluator_and_trains_the_2015_model(tmp_path):
    """The profile mnist-conditional at test size: s = 0 is the unguided cell bit for bit, a guided cell's target-hit
    rate is the evaluator's judgement (recomputed here from models/evaluator.pt, a LeNet the sampler never saw), the
    classifier's accuracy by t is written, the 2015 model's row has its bound, and both inpainting rules keep the
    source's known pixels and are scored against it."""
    over = overlay(tmp_path / "tiny.yaml", TINY_CONDITIONAL,
                   replace={"sweep": CONDITIONAL_SWEEP, "guided_sweep": GUIDED})
    proc = profile("mnist-conditional", tmp_path, over)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ws = tmp_path / "ws"
    df = table(ws)
    unguided, s0, s2 = (dict(np.load(ws / f"samples/{c}.npz")) for c in ("ddim-5", "ddim-5-s0", "ddim-5-s2"))
    assert np.array_equal(s0["x"], unguided["x"]) and not np.array_equal(s2["x"], unguided["x"])
    assert df.loc["ddim-5-s0", "fid"] == df.loc["ddim-5", "fid"]

    ckpt = torch.load(ws / "models/evaluator.pt", weights_only=True)
    judge = LeNet(**ckpt["config"])
    judge.load_state_dict(ckpt["weights"])
    with torch.no_grad():
        says = judge(to_model_space(torch.from_numpy(s2["x"]))).argmax(-1).numpy()
    assert df.loc["ddim-5-s2", "target_hit"] == pytest.approx(float((says == s2["y"]).mean()), abs=1e-12)

    accuracy = pd.read_csv(ws / "plots/train_classifier/accuracy.csv")
    assert len(accuracy) == 5 and accuracy["accuracy"].between(0, 1).all()
    assert df.loc["sd2015-50", "nll"] > 0 and df.loc["sd2015-50", "n"] == 8
    ref, ref_y = (np.load(ws / "data/reference.npz")[k] for k in ("x", "y"))
    for rule in ("clamp", "noised"):
        out = np.load(ws / f"samples/ddpm-10-bottom-{rule}.npz")
        hidden = out["mask"]
        assert np.array_equal(out["x"][:, ~hidden], ref[:8][:, ~hidden]) and np.array_equal(out["source_y"], ref_y[:8])
        assert 0 <= df.loc[f"ddpm-10-bottom-{rule}", "inpaint_accuracy"] <= 1
        assert df.loc[f"ddpm-10-bottom-{rule}", "inpaint_mse"] > 0
    assert "Inpainted rows" in (ws / "metrics/trilemma.md").read_text()
    assert "guidance-hits-the-target" in (ws / "metrics/claims.json").read_text()  # its own claims file was checked


def test_stackedmnist_profile_counts_modes_channel_by_channel_and_trains_ddgan_on_stacks(tmp_path):
    """The profile stackedmnist at test size: three-channel stacks through DDIM and DDGAN (T = 1 and 2, the image
    networks), every row's mode count and KL recomputed here from models/evaluator.pt reading each channel alone, the
    data row's too, and the profile's own claims file checked."""
    over = overlay(tmp_path / "tiny.yaml", {**TINY_IMAGES, "data": {"n_train": 300, "n_reference": 100}},
                   replace={"sweep": {"ddim-4": {"model": "ddpm", "sampler": "ddim", "steps": 4, "eta": 0.0,
                                                 "clip_x0": True}},
                            "ddgan": {"T": [1, 2]}})
    proc = profile("stackedmnist", tmp_path, over)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ws = tmp_path / "ws"
    df = table(ws)
    ckpt = torch.load(ws / "models/evaluator.pt", weights_only=True)
    judge = LeNet(**ckpt["config"])
    judge.load_state_dict(ckpt["weights"])
    for cell in ("ddim-4", "ddgan-1", "ddgan-2"):
        x = np.load(ws / f"samples/{cell}.npz")["x"]
        assert x.shape == (24, 3, 28, 28) and x.dtype == np.uint8
        with torch.no_grad():  # each channel on its own, as a one-channel digit
            digits = [judge(to_model_space(torch.from_numpy(x[:, c:c + 1]))).argmax(-1).numpy() for c in range(3)]
        modes = 100 * digits[0] + 10 * digits[1] + digits[2]
        p = np.bincount(modes, minlength=1000) / len(modes)
        assert df.loc[cell, "label_modes"] == len(np.unique(modes)), cell
        assert df.loc[cell, "label_kl"] == pytest.approx(float(np.sum(p[p > 0] * np.log(p[p > 0] * 1000))))
    assert df.loc["ddgan-2", "nfe"] == 2 and df.loc["ddgan-2", "sampler"] == "ddgan"
    assert 1 <= df.loc["data", "label_modes"] <= 24 and df.loc["data", "label_kl"] >= 0
    losses = pd.read_csv(ws / "plots/train_ddgan/2/losses.csv")
    assert set(losses["t"].astype(str)) == {"0", "1", "all"}
    assert "label_modes" in (ws / "metrics/trilemma.md").read_text()
    assert "ddgan-covers-stackedmnist" in (ws / "metrics/claims.json").read_text()  # its own claims file


def test_cifar10_profile_runs_on_fake_batches_with_a_local_inception_file(tmp_path):
    (tmp_path / "external").mkdir()
    write_cifar10_batches(tmp_path / "external/cifar-10-batches-py", 20)
    write_random_inception_weights(tmp_path / "external/weights-inception-2015-12-05-6726825d.pth")
    over = overlay(tmp_path / "tiny.yaml", {
        **TINY_IMAGES, "train_ddpm": {**TINY_IMAGES["train_ddpm"], "batch_size": 8},
        "data": {"n_train": 60, "n_reference": 20},
        "evaluate": {"kid_subsets": 5, "kid_subset_size": 10}, "sample": {"n": 12, "batch_size": 12},
        "runtime": {"channels_last": False}},
        replace={"sweep": {"ddim-5": {"model": "ddpm", "sampler": "ddim", "steps": 5, "eta": 0.0, "clip_x0": True},
                           "iddpm-5": {"model": "iddpm", "sampler": "ddpm", "steps": 5, "variance": "learned",
                                       "clip_x0": True}}})
    proc = profile("cifar10", tmp_path, over)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    df = table(tmp_path / "ws").loc[["data", "ddim-5", "iddpm-5"]]
    assert df["extractor"].str.startswith("inception-").all() and df["extractor"].nunique() == 1
    assert df[["fid", "kid", "precision", "recall", "classifier_score"]].notna().all().all()
    assert experiments(tmp_path / "mlflow.db").get("trilemma-cifar10", 0) > 0


def test_an_image_profile_without_its_local_files_stops_in_one_line_before_any_stage(tmp_path):
    over = tmp_path / "none.yaml"
    over.write_text("merge: {}\n")  # the profile as it is
    proc = profile("cifar10", tmp_path, over)
    assert proc.returncode == 2 and not (tmp_path / "ws").exists()
    assert proc.stderr.strip().splitlines() == [
        "error: data.path: no folder data/external/cifar-10-batches-py: nothing is downloaded; put CIFAR-10's python "
        "batches (cifar-10-batches-py) there, or link it (data/external/README.md)"]
