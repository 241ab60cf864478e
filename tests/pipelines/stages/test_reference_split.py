"""The split FID, KID and precision/recall compare against (params evaluate.reference): CIFAR-10 scores against its
training set by default, as DDPM's FID does (3.17 against the training set, 5.24 against the test set), with the
held-out test batch as the option; every other run keeps the held-out split. The stages run on fake CIFAR-10
batches written in the real format and an Inception of random weights (nothing can be downloaded here)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from components.data.datasets import DATASETS
from components.scoring.metrics import frechet_distance_from_statistics
from conftest import ROOT, edited, write_cifar10_batches, write_random_inception_weights
from pipelines.stages import evaluator
from pipelines.stages import prepare
from pipelines.stages import reference
from pipelines.stages import table
from pipelines.claims.columns import METRICS, SETTINGS
from pipelines.plumbing.errors import ParamsError
from pipelines.plumbing.loading import load_dataset, load_reference_stats
from pipelines.params import load_params, parse_params
from pipelines.orchestration.profile import load_profile, profile_params

N_TRAIN, N_HELD_OUT = 8, 4  # images of the fake train split and held-out split; sample.n = N_HELD_OUT
SMALL = {"data": {"n_train": N_TRAIN, "n_reference": N_HELD_OUT}, "sample": {"n": N_HELD_OUT, "batch_size": 4},
         "nll": {"n": N_HELD_OUT, "batch_size": 4}, "evaluate": {"kid_subsets": 2, "kid_subset_size": 2},
         "runtime": {"device": "cpu", "channels_last": False}}


def cifar10_params(reference: str | None = None) -> dict:
    """The cifar10 profile at SMALL sizes; `reference` sets evaluate.reference (None: the profile's)."""
    over = SMALL if reference is None else {**SMALL, "evaluate": {**SMALL["evaluate"], "reference": reference}}
    return profile_params(load_profile("cifar10"), overlay={"merge": over})


def test_cifar10_scores_against_its_training_set_and_every_other_run_against_the_held_out_split():
    assert parse_params(cifar10_params(), "cifar10").evaluate.reference == "train"
    assert parse_params(cifar10_params("test"), "cifar10").evaluate.reference == "test"
    for name in ("mnist", "demo", "swissroll"):
        assert parse_params(profile_params(load_profile(name)), name).evaluate.reference == "test"
    assert load_params(ROOT / "params.yaml").evaluate.reference == "test"


@pytest.mark.parametrize("key,value,expected", [
    ("evaluate.reference", "val", "evaluate.reference: unknown reference split 'val'; allowed: test, train"),
    ("evaluate.reference", "training", "evaluate.reference: unknown reference split 'training'; allowed: test, train"),
    ("data.n_train", 3, "evaluate.k: 3 must be below data.n_train = 3 (the reference set of evaluate.reference: "
                        "train)"),
])
def test_a_bad_reference_fails_in_one_line_naming_the_key(key, value, expected):
    with pytest.raises(ParamsError) as e:
        parse_params(edited(cifar10_params(), key.split("."), value), "cifar10")
    assert str(e.value) == f"cifar10: {expected}"


def run_stages(ws, params: dict, split: str, evaluator_path: str) -> tuple:
    """Stage reference in `ws` (its splits prepared) with evaluate.reference = `split`: its statistics, its row `data`
    and the two splits."""
    (ws / "params.yaml").write_text(yaml.safe_dump(edited(params, ["evaluate", "reference"], split)))
    stats, row = f"data/stats-{split}.npz", f"metrics/data-{split}.json"
    reference.main(["data/train.npz", "data/reference.npz", evaluator_path, stats, row])
    name, k = params["data"]["name"], params["evaluate"]["k"]
    return (load_reference_stats(ws / stats, params["evaluate"]["features"], k), json.loads((ws / row).read_text()),
            *(load_dataset(ws / f"data/{s}.npz", name) for s in ("train", "reference")))


@pytest.fixture
def quiet(monkeypatch):
    """Stage runs are not logged to MLflow."""
    for stage in (prepare, evaluator, reference):
        monkeypatch.setattr(stage, "log_stage_run", lambda run: None)


@pytest.mark.parametrize("split", ["train", "test"])
def test_the_reference_stage_fits_the_split_params_name_and_scores_the_other(tmp_path, monkeypatch, quiet, split):
    """On points (their own features): the statistics are the named split's, row `data` scores the other one."""
    monkeypatch.chdir(tmp_path)
    params = edited(edited(yaml.safe_load((ROOT / "params.yaml").read_text()), ["data", "n_train"], 60),
                    ["data", "n_reference"], 30)
    params = edited(edited(params, ["sample", "n"], 20), ["nll", "n"], 20)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    prepare.main(["data/train.npz", "data/reference.npz"])
    stats, row, train, held_out = run_stages(tmp_path, params, split, "identity")
    against, scored = (train.x, held_out.x) if split == "train" else (held_out.x, train.x)
    assert stats.features.numpy() == pytest.approx(against.reshape(len(against), -1))
    scored = scored[:20].astype(np.float64)  # sample.n of them
    fid = frechet_distance_from_statistics(scored.mean(0), np.cov(scored, rowvar=False), stats.mu, stats.sigma)
    assert row["fid"] == pytest.approx(fid, rel=1e-9)


@pytest.mark.slow  # a whole prepare, evaluator and reference on fake CIFAR-10 batches: about 30 s
def test_the_cifar10_profile_fits_the_statistics_on_the_training_images(tmp_path, monkeypatch, quiet):
    """The profile's reference on CIFAR-10 batches in the real format: the 8 train images, not the 4 test ones (an
    Inception of random weights maps every image to nearly one feature vector, so the count tells them apart)."""
    monkeypatch.chdir(tmp_path)
    write_cifar10_batches(tmp_path / "data/external/cifar-10-batches-py", N_HELD_OUT)
    write_random_inception_weights(tmp_path / "data/external/weights-inception-2015-12-05-6726825d.pth")
    params = cifar10_params()
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    prepare.main(["data/train.npz", "data/reference.npz"])
    evaluator.main(["data/train.npz", "data/reference.npz", "models/evaluator.pt", "metrics/evaluator.json"])
    stats, row, train, held_out = run_stages(tmp_path, params, "train", "models/evaluator.pt")
    assert (len(train.x), len(held_out.x)) == (N_TRAIN, N_HELD_OUT)
    assert len(stats.features) == len(stats.radii) == N_TRAIN
    assert row["extractor"] == stats.feature_name and stats.feature_name.startswith("inception-")


def header(raw: dict) -> str:
    """The markdown header stage table writes for params `raw`, on a table holding row `data` alone."""
    params = parse_params(raw)
    main = pd.DataFrame([{"cell": "data", "data": params.data.name, "extractor": "inception-0123abcd"}]).reindex(
        columns=[*SETTINGS, *METRICS])
    return table.table_header(params, DATASETS[params.data.name], main, {})


def test_the_table_names_the_reference_split():
    train, test = parse_params(cifar10_params()), parse_params(cifar10_params("test"))
    assert table.reference_split(train) == ("train split", N_TRAIN)
    assert table.ceiling_split(train) == ("held-out split", N_HELD_OUT)
    assert table.reference_split(test) == ("reference split", N_HELD_OUT)
    assert table.ceiling_split(test) == ("train split", N_HELD_OUT)
    text = header(cifar10_params())
    assert (f"cifar10 images against the {N_TRAIN}-image train split (evaluate.reference: train, as DDPM's CIFAR-10 "
            f"FID): FID, KID") in text
    assert f"Row `data` is {N_HELD_OUT} points of the held-out split, unseen in training" in text
    text = header(cifar10_params("test"))
    assert f"cifar10 images against the {N_HELD_OUT}-image reference split: FID, KID" in text
    assert "Row `data` is the train split (the ceiling, or for FID and KID the floor)." in text
    # the toy's header is what it was before the option existed (README's table reads it)
    text = header(yaml.safe_load((ROOT / "params.yaml").read_text()))
    assert "metrics in data units against the 10000-point reference split. " in text
    assert "Row `data` is the train split (the ceiling, or for FID and KID the floor). " in text
