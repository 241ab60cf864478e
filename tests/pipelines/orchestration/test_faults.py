"""Fault injection: a mistake costs a one-line error and nothing else; a kill costs no completed work.

Generic over dvc.yaml's stages and the data registry, so that a new stage or data set is covered
without new test code: every trainer is killed with SIGKILL at seeded points and resumes to
byte-identical outputs; every stage is fed each kind of corrupt input it reads; NaN is injected
into training, checkpoints and sampling; cell names that would run shell code or escape the
repository, rejected params and broken params files leave every output as it was; params.yaml
is fuzzed (hypothesis); two `dvc repro` run at once. Each test works on a copy of one small,
fully built checkout (conftest's tiny budgets with one cell of each kind).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import importlib
import json
import os
import random
import re
import shlex
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from components.data.cifar10 import cifar10_splits
from components.data.datasets import DATASETS
from pipelines.claims.spec import load_claims
from pipelines.plumbing.entry import ONE_LINE_ERRORS
from pipelines.plumbing.errors import InputError
from pipelines.plumbing.loading import load_dataset, save_dataset
from pipelines.params import ParamsError, load_params
from pipelines.params.fields import INT64, NAME

from conftest import ROOT, SMALL_SWEEPS, TINY, copy_of, run, stage_env, write_cifar10_batches, write_params

pytestmark = pytest.mark.slow

DVC_YAML = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
# Trainers: the stages that run the shared training loop (and write resume checkpoints).
# Stage evaluator shares the loop too, but trains only for digits (`evaluate.features: lenet`); on the toy it writes
# the identity extractor, so its kills are not among these (tests/pipelines/stages/test_images.py runs it on digits).
TRAINERS = [name for name, s in DVC_YAML.items() if "pipelines/stages/trainer.py" in s.get("deps", []) and name != "evaluator"]


INPUT_SUFFIXES = (".npz", ".pt", ".json", ".csv")  # the files a stage loads; a directory dep is a folder of them


@pytest.fixture(scope="module")
def built(small_run) -> Path:
    """A fully built checkout: `dvc repro` of the tiny DAG with one cell of each kind (shared by the test run)."""
    return small_run


@pytest.fixture
def repo(built, tmp_path) -> Path:
    """A copy of the built checkout to break."""
    return copy_of(built, tmp_path / "repo")


def md5(path: Path) -> str | None:
    """A file's md5, or a directory's as dvc.lock records it: the md5 of the JSON list of its files' md5 and relative
    path, sorted by path, with `.dir` appended (metrics/claims/ is one)."""
    if path.is_dir():
        files = sorted((f.relative_to(path).as_posix(), f) for f in path.rglob("*") if f.is_file())
        entries = [{"md5": md5(f), "relpath": rel} for rel, f in files]
        return hashlib.md5(json.dumps(entries, sort_keys=True).encode()).hexdigest() + ".dir"
    return hashlib.md5(path.read_bytes()).hexdigest() if path.is_file() else None


def lock_entries(repo: Path) -> dict:
    return yaml.safe_load((repo / "dvc.lock").read_text())["stages"]


def assert_nothing_lost(repo: Path, before: dict) -> None:
    """Every stage's committed lock entry is unchanged (the validate stage's may record a new params.yaml), and every
    output it records is in the workspace with its recorded bytes."""
    after = lock_entries(repo)
    assert {k: v for k, v in after.items() if k != "validate"} == {k: v for k, v in before.items() if k != "validate"}
    for stage, entry in before.items():
        for out in entry.get("outs", []):
            assert md5(repo / out["path"]) == out["md5"], f"{stage}: {out['path']} lost or changed"


def stage_addresses(repo: Path) -> dict[str, tuple[list[str], list[str], list[str]]]:
    """Every stage of the checkout's DAG: address -> (command argv, deps, outs), as DVC resolves them."""
    from dvc.repo import Repo

    with Repo(str(repo)) as r:
        return {s.name: (shlex.split(s.cmd), [d.def_path for d in s.deps], [o.def_path for o in s.outs])
                for s in r.index.stages}


def instance(stages: dict, name: str) -> str:
    """The last instance of dvc.yaml stage `name` (itself, or of its foreach/matrix): `train_ddgan@2`."""
    return [a for a in stages if a == name or a.startswith(f"{name}@")][-1]


def set_params(repo: Path, change) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    change(params)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    """The stage's own error lines (DVC adds its own `ERROR: failed to reproduce` line after them)."""
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("error: ")]


# --- names that would run shell code or escape the repository ------------------------------------------------

BAD_NAMES = ["x$(touch {marker})", "x`touch {marker}`", "a;touch {marker}", "a/b", "/tmp/escape", "..", "my cell",
             "a" * 300, "-rf", "ünï", "a.5", ""]


# One name of each kind through a whole `dvc repro` (the validate stage's guard; ~5 s each): every name is refused by
# the loader (test_every_name_that_reaches_a_path_or_command_is_checked), and shell names through a single stage by
# test_a_hostile_name_reaches_no_shell_when_one_stage_is_rerun.
@pytest.mark.parametrize("name", [BAD_NAMES[0], BAD_NAMES[4]])
def test_bad_cell_names_stop_dvc_repro_before_anything_runs(repo, name, tmp_path):
    marker = tmp_path / "injected"
    before = lock_entries(repo)
    set_params(repo, lambda p: p["sweep"].__setitem__(name.format(marker=marker), dict(p["sweep"]["ddim-4"])))
    proc = run(["dvc", "repro"], repo, check=False)
    assert proc.returncode != 0 and not marker.exists()
    assert len(error_lines(proc)) == 1 and error_lines(proc)[0].startswith("error: params.yaml: sweep: cell name ")
    assert "Running stage 'validate'" in proc.stdout and proc.stdout.count("Running stage") == 1
    assert_nothing_lost(repo, before)


# A name in each section whose keys become stage items, written to run shell code if it reached a command line.
HOSTILE = (("sweep", "x`touch {marker}`"), ("guided_sweep", "x$(touch {marker})"), ("exact_sweep", "a;touch {marker}"),
           ("sweep", "q'touch {marker}"), ("exact_sweep", "n\ntouch {marker}"))


def test_a_hostile_name_reaches_no_shell_when_one_stage_is_rerun(repo, tmp_path):
    """`dvc repro -s <stage>@<name>`, which a user types to rerun one cell, skips the validate stage, and DVC writes
    `${key}` into a stage's cmd before the stage runs: no cmd may hold a name from params.yaml. Each stage reads its
    item from DVC_STAGE and refuses the name in one line; nothing runs in a shell and no output changes. (`-s` is
    `--single-item`: half the names go through each spelling.)"""
    marker = tmp_path / "injected"
    before = lock_entries(repo)

    def add_hostile(p: dict) -> None:
        for i, (section, name) in enumerate(HOSTILE):
            p[section][name.format(marker=f"{marker}-{i}")] = dict(next(iter(p[section].values())))
        p["ddgan"]["T"].append(f"1;touch {marker}-T")  # a matrix item: train_ddgan@<T>, sample_ddgan@<T>

    set_params(repo, add_hostile)
    hostile = [a for a in stage_addresses(repo) if "touch" in a]
    assert len(hostile) == len(HOSTILE) + 2
    for flag, targets in (("-s", hostile[0::2]), ("--single-item", hostile[1::2])):
        proc = run(["dvc", "repro", flag, "--keep-going", *targets], repo, check=False)
        assert proc.returncode != 0
        # sample_ddgan@<T> does not start: its checkpoint, the hostile train_ddgan@<T>'s output, is missing
        started = [t for t in targets if not t.startswith("sample_ddgan@")]
        assert sum(line.startswith("Running stage '") for line in proc.stdout.splitlines()) == len(started)
        errors = error_lines(proc)  # each stage's own one line, before any compute
        assert len(errors) == len(started) and all(e.startswith("error: params.yaml: ") for e in errors), errors
    assert not list(tmp_path.glob("injected*"))
    assert_nothing_lost(repo, before)


def test_no_stage_command_holds_text_from_params():
    """dvc.yaml's commands are fixed text and the project's own paths: no `${...}` that DVC would fill in from
    params.yaml (a cell name, a model, a T) before the stage could check it."""
    for name, stage in DVC_YAML.items():
        cmd = stage.get("do", stage)["cmd"]
        assert "${" not in cmd, f"{name}: {cmd}"


@pytest.mark.parametrize("name", BAD_NAMES)
def test_every_name_that_reaches_a_path_or_command_is_checked(name, tmp_path):
    """Each section whose keys become stage names and file names."""
    for section in ("sweep", "guided_sweep", "exact_sweep"):
        raw = yaml.safe_load((ROOT / "params.yaml").read_text())
        cells = raw[section]
        cells[name.format(marker=tmp_path / "m")] = next(iter(cells.values()))
        path = tmp_path / "params.yaml"
        path.write_text(yaml.safe_dump(raw))
        with pytest.raises(ParamsError, match=rf"^{re.escape(str(path))}: {section}: cell name .* is not allowed: ") as e:
            load_params(path)
        assert "\n" not in str(e.value)


# --- rejected params and broken params files -----------------------------------------------------------------

def _append(data: bytes):
    return lambda path: path.write_bytes(path.read_bytes() + data)


def _value(*key, value):
    def change(path: Path) -> None:
        raw = yaml.safe_load(path.read_text())
        node = raw
        for k in key[:-1]:
            node = node[k]
        node[key[-1]] = value
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return change


REJECTED = {  # the probes: what `make repro` (and the validate stage) say, then `dvc repro` itself
    "lr inf": (_value("train_ddpm", "lr", value=float("inf")), "train_ddpm.lr: must be a finite number, got inf"),
    "std inf": (_value("data", "std", value=float("inf")), "data.std: must be a finite number, got inf"),
    "seed -1": (_value("data", "seed", value=-1), "data.seed: a seed must be in [0, 2^63), got -1"),
    "seed 2^64": (_value("sample", "seed", value=2**64), "sample.seed: 18446744073709551616 does not fit in 64 bits"),
    "k > n": (_value("evaluate", "k", value=600), "evaluate.k: 600 must be below sample.n = 500"),
    "eta 2": (_value("sweep", "ddim-4", "eta", value=2.0), "sweep.ddim-4.eta: must be in [0, 1], got 2.0"),
    "duplicate key": (_append(b"data:\n  seed: 1\n"), "duplicate key 'data' (first given at line 1)"),
    "not UTF-8": (_append(b"# caf\xe9\n"), "not UTF-8 (byte 0xe9)"),
    "a list": (lambda p: p.write_text("- data\n- sweep\n"), "expected a mapping of sections (data, diffusion, "),
}


@pytest.mark.parametrize("probe", list(REJECTED))
def test_rejected_params_are_one_line_and_dvc_repro_loses_nothing(repo, probe):
    change, message = REJECTED[probe]
    before = lock_entries(repo)
    change(repo / "params.yaml")
    check = run(["python", "-m", "pipelines.params"], repo, check=False)  # what `make repro` runs first
    assert check.returncode == 2 and check.stderr.count("\n") == 1 and message in check.stderr, check.stderr
    assert check.stderr.startswith("error: params.yaml: ")
    t0 = time.time()
    proc = run(["dvc", "repro"], repo, check=False)
    assert proc.returncode != 0 and time.time() - t0 < 60
    assert "Running stage" not in proc.stdout.replace("Running stage 'validate'", "")
    assert_nothing_lost(repo, before)


# --- corrupt inputs, for every stage that reads them ------------------------------------------------------------

class Payload:
    """Pickled code: unpickling runs `touch <marker>`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _first_float(ckpt: dict) -> torch.Tensor | None:
    """The checkpoint's first float tensor (of the EMA, or of an extractor's weights); None if it holds none (the
    identity extractor's file)."""
    for value in (ckpt.get("ema") or ckpt.get("weights") or ckpt).values():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return value
    return None


def _npz_with(path: Path, **changes) -> None:
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    arrays.update(changes)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _first(path: Path, ndim: int) -> str:
    """The name of the file's first float array of at least `ndim` dimensions: `x` in samples, `features` in stats."""
    with np.load(path) as f:
        return next(k for k in f.files if f[k].dtype.kind == "f" and f[k].ndim >= ndim)


def _nan_x(path: Path) -> None:
    key = _first(path, 1)
    with np.load(path) as f:
        x = f[key].copy()
    x.reshape(-1)[0] = np.nan
    _npz_with(path, **{key: x})


def _extra_column(path: Path) -> None:
    key = _first(path, 2)
    with np.load(path) as f:
        x = f[key]
    _npz_with(path, **{key: np.concatenate([x, x[:, :1]], axis=1)})


def _nan_weights(path: Path) -> bool:
    """A NaN in the first weight; False where the checkpoint has no weights (nothing to corrupt)."""
    ckpt = torch.load(path, weights_only=True)
    weight = _first_float(ckpt)
    if weight is None:
        return False
    weight.view(-1)[0] = float("nan")
    torch.save(ckpt, path)
    return True


def _without_config(path: Path) -> None:
    ckpt = torch.load(path, weights_only=True)
    del ckpt["config"]
    torch.save(ckpt, path)


BYTE_KINDS = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "random bytes": lambda p: p.write_bytes(np.random.default_rng(0).bytes(max(p.stat().st_size, 64))),
    "empty": lambda p: p.write_bytes(b""),
}
CORRUPTIONS = {
    ".npz": {**BYTE_KINDS, "NaN in x": _nan_x, "an extra column": _extra_column},
    ".json": {**BYTE_KINDS, "not an object": lambda p: p.write_text("[1, 2]\n")},  # a cell's row or timing
    ".csv": {**BYTE_KINDS, "a column missing": lambda p: p.write_text(  # the table, read by the claims stage
        "\n".join(",".join(line.split(",")[:-1]) for line in p.read_text().splitlines()) + "\n")},
    ".pt": {**BYTE_KINDS, "NaN weights": _nan_weights, "no config": _without_config,
            "pickled code": lambda p: torch.save({"ema": Payload(p.parent / "injected")}, p)},
}


def run_stage_in_process(repo: Path, address: str, argv: list[str]) -> str | None:
    """Stage `address`'s command (`python -m pipelines.X ...`) run in this process in `repo`, with the DVC_STAGE DVC
    would set: its one-line error, or None."""
    assert argv[:2] == ["python", "-m"], argv
    main = importlib.import_module(argv[2]).main
    cwd, before = os.getcwd(), os.environ.get("DVC_STAGE")
    os.chdir(repo)
    os.environ["DVC_STAGE"] = address
    try:
        main(argv[3:])
    except ONE_LINE_ERRORS as e:
        return str(e)
    finally:
        os.chdir(cwd)
        if before is None:
            os.environ.pop("DVC_STAGE")
        else:
            os.environ["DVC_STAGE"] = before
    return None


def test_every_stage_refuses_each_corrupt_input_in_one_line(repo, monkeypatch):
    """Each dvc.yaml stage (one instance of each foreach/matrix), each data file or checkpoint it reads, each kind of
    corruption: a one-line error naming the file, before any output is written, and no pickled code runs."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{repo / 'mlflow.db'}")
    stages = stage_addresses(repo)
    checked = []
    for name in DVC_YAML:
        address = instance(stages, name)
        argv, deps, outs = stages[address]
        inputs = [Path(d) for d in deps if Path(d).suffix in INPUT_SUFFIXES]
        inputs += [files[0].relative_to(repo) for d in deps if (repo / d).is_dir()  # data/external: none on the toy
                   for files in [sorted(f for f in (repo / d).iterdir() if f.suffix in INPUT_SUFFIXES)] if files]
        if name in TRAINERS:  # a resume checkpoint it would read
            inputs += [Path(f"{o}.partial") for o in outs if o.endswith(".pt")]
        for rel in inputs:
            path = repo / rel
            kinds = CORRUPTIONS[".pt" if rel.name.endswith((".pt", ".partial")) else rel.suffix]
            original = path.read_bytes() if path.exists() else None
            if original is None:  # a .partial: what a killed run leaves, from the finished checkpoint
                original = (repo / rel.with_suffix("")).read_bytes()
            before = {o: md5(repo / o) for o in outs}
            for kind, corrupt in kinds.items():
                path.write_bytes(original)
                if corrupt(path) is False:  # not applicable to this file
                    continue
                error = run_stage_in_process(repo, address, argv)
                assert error is not None, f"{address} accepted {rel} with {kind}"
                assert "\n" not in error and str(rel) in error, (address, kind, error)
                assert {o: md5(repo / o) for o in outs} == before, (address, kind)
                assert not (path.parent / "injected").exists()
                checked.append((address, str(rel), kind))
            if rel.suffix == ".partial":
                path.unlink()
            else:
                path.write_bytes(original)
    readers = {instance(stages, n) for n in DVC_YAML if n not in ("validate", "prepare")}
    assert {a for a, _, _ in checked} >= readers  # every stage but those that read no data file or checkpoint
    print(f"\n{len(checked)} corrupt inputs refused, over {len({a for a, _, _ in checked})} stages")


def _dataset_kinds(spec) -> dict:
    """Each way a data split can be wrong, as a change to its arrays (None: to the file's bytes)."""
    def x_as(x):
        return lambda a: {**a, "x": x(a["x"])}
    return {
        "an extra column": x_as(lambda x: np.concatenate([x.reshape(len(x), -1)] * 2, 1)),
        "1-D x": x_as(lambda x: x.reshape(-1)),
        "string x": x_as(lambda x: x.astype(str)),
        "empty x": x_as(lambda x: x[:0]),
        "int64 x": x_as(lambda x: x.astype(np.int64)),
        "float16 x": x_as(lambda x: x.astype(np.float16)),
        "all-NaN x": x_as(lambda x: np.full_like(x, np.nan, dtype=np.float32)),
        **({} if spec.dtype == np.uint8 else {  # uint8 pixels hold no inf
            "inf in x": x_as(lambda x: np.where(np.arange(x.size).reshape(x.shape) == 0, np.inf, x).astype(x.dtype))}),
        "label out of range": lambda a: {**a, "y": np.full_like(a["y"], spec.n_classes)},
        "negative label": lambda a: {**a, "y": np.full_like(a["y"], -1)},
        "one label short": lambda a: {**a, "y": a["y"][:-1]},
        "float labels": lambda a: {**a, "y": a["y"].astype(np.float64)},
        "no labels": lambda a: {k: v for k, v in a.items() if k != "y"},
        "scale 0": lambda a: {**a, "scale": np.float64(0.0)},
        "NaN shift": lambda a: {**a, "shift": np.float64(np.nan)},
        "array scale": lambda a: {**a, "scale": np.ones(3)},
        "truncated": None,
    }


@pytest.mark.parametrize("name", list(DATASETS))
def test_every_registered_data_set_refuses_each_bad_file_in_one_line(name, tmp_path):
    spec = DATASETS[name]
    if name == "cifar10":  # fake batches of 30 images in CIFAR-10's format (the registry's reader wants 10,000)
        write_cifar10_batches(tmp_path / "cifar", 30)
        good = cifar10_splits(tmp_path / "cifar", 50, 20, expected_per_batch=30)["train"]
    else:
        good = spec.build(50, 20, 0, **({"std": 0.05} if "std" in spec.options else {}))["train"]
    path = tmp_path / "train.npz"
    save_dataset(path, good)
    arrays = dict(np.load(path))
    assert load_dataset(path, name).x.shape == good.x.shape
    for kind, change in _dataset_kinds(spec).items():
        if change is None:
            path.write_bytes(path.read_bytes()[:100])
        else:
            with open(path, "wb") as f:
                np.savez(f, **change(arrays))
        with pytest.raises(InputError) as e:
            load_dataset(path, name)
        assert str(e.value).startswith(f"{path}: ") and "\n" not in str(e.value), (kind, e.value)
    with open(path, "wb") as f:  # object arrays would unpickle: refused
        np.savez(f, **{**arrays, "x": np.array([Payload(tmp_path / "injected")], dtype=object)})
    with pytest.raises(InputError, match="not a readable .npz file"):
        load_dataset(path, name)
    assert not (tmp_path / "injected").exists()


def repro_on_truncated_input(repo: Path, rel: str, stage: str) -> subprocess.CompletedProcess:
    """`dvc repro` of `stage` alone (as the Prefect flow runs stages) with input `rel` cut in half; the input is put
    back afterwards, so that only the stage's own outputs are left to check."""
    path = repo / rel
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])
    try:
        return run(["dvc", "repro", "--single-item", "--force", stage], repo, check=False)
    finally:
        path.write_bytes(good)


def test_a_truncated_checkpoint_under_dvc_repro_leaves_the_samples(repo):
    """A stage run alone on a truncated checkpoint: one line, its outputs back."""
    before = lock_entries(repo)
    proc = repro_on_truncated_input(repo, "models/ddpm.pt", "sample@ddim-4")
    assert proc.returncode != 0
    assert len(error_lines(proc)) == 1 and "models/ddpm.pt: not a loadable checkpoint" in proc.stderr
    assert_nothing_lost(repo, before)


def test_a_failing_claims_stage_under_dvc_repro_puts_its_metrics_directory_back(repo):
    """The claims stage owns a directory output (metrics/claims/, one file per claim): DVC deletes it before the stage
    runs, and a failure puts every file back from the cache, by the directory's manifest."""
    before = lock_entries(repo)
    proc = repro_on_truncated_input(repo, "metrics/trilemma.csv", "claims")
    assert proc.returncode != 0
    assert len(error_lines(proc)) == 1 and "metrics/trilemma.csv: empty or cut short" in proc.stderr
    assert len(list((repo / "metrics/claims").glob("*.json"))) == len(load_claims(repo / "claims.yaml").claims)
    assert_nothing_lost(repo, before)


# --- NaN: diverging training, exploding samplers -----------------------------------------------------------------

def test_diverging_training_stops_in_one_line_and_keeps_the_committed_model(repo):
    before = lock_entries(repo)
    set_params(repo, lambda p: p["train_ddpm"].__setitem__("lr", 1e30))
    proc = run(["dvc", "repro"], repo, check=False)
    assert proc.returncode != 0
    (line,) = error_lines(proc)
    assert re.fullmatch(r"error: train_ddpm: loss is (nan|inf) at step \d+: training diverged, nothing written; .*", line)
    assert "Running stage 'finetune_iddpm'" not in proc.stdout
    assert_nothing_lost(repo, before)
    status = run(["dvc", "status", "train_ddpm"], repo).stdout
    assert "changed deps" in status and "changed outs" not in status


def test_samplers_refuse_non_finite_samples_and_keep_the_committed_ones(repo):
    before = lock_entries(repo)
    set_params(repo, lambda p: p["exact_sweep"]["exact-ddim-4"].update(scale=1e300))  # finite, and absurd
    proc = run(["dvc", "repro"], repo, check=False)
    assert proc.returncode != 0
    (line,) = error_lines(proc)
    assert re.fullmatch(r"error: sample_exact@exact-ddim-4: \d+ of 500 samples are non-finite: the sampler diverged; "
                        r"nothing written", line)
    assert_nothing_lost(repo, before)


# --- kills -----------------------------------------------------------------------------------------------------

def _wait_then_kill(proc: subprocess.Popen, ready, timeout: float = 120) -> bool:
    """SIGKILL `proc` as soon as ready() holds; False if it ended first."""
    deadline = time.time() + timeout
    while proc.poll() is None and time.time() < deadline:
        if ready():
            proc.kill()
            proc.wait()
            return True
        time.sleep(0.005)
    proc.wait()
    return False


@pytest.mark.parametrize("trainer", TRAINERS)
def test_killed_trainer_resumes_to_byte_identical_outputs(repo, trainer):
    """kill -9 at a seeded random time, just after a resume checkpoint is replaced, and just after the final checkpoint
    appears (while the outputs are written and logged); the run that finishes writes the bytes an unbroken run writes,
    and one killed after its last step redoes no training. Resume checkpoints every log_every steps, so that kills land
    between them."""
    section = yaml.safe_load((repo / "params.yaml").read_text())[trainer]
    set_params(repo, lambda p: p[trainer].update(checkpoint_every=section["log_every"]))
    stages = stage_addresses(repo)
    address = instance(stages, trainer)
    argv, _, outs = stages[address]
    ckpt = repo / next(o for o in outs if o.endswith(".pt"))
    partial = ckpt.with_name(ckpt.name + ".partial")
    env = stage_env(MLFLOW_TRACKING_URI=f"sqlite:///{repo / 'mlflow.db'}", DVC_STAGE=address)

    def start() -> subprocess.Popen:
        for o in outs:  # as DVC does before it runs a stage
            (repo / o).unlink(missing_ok=True)
        return subprocess.Popen(argv, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    t0 = time.time()
    unbroken = start()
    assert unbroken.wait() == 0, unbroken.stdout.read()
    duration = time.time() - t0
    reference = {o: md5(repo / o) for o in outs}

    def inode(path: Path) -> int | None:
        return path.stat().st_ino if path.exists() else None

    rng, kills = random.Random(address), []
    for when in ("random", "partial replaced", "final checkpoint written"):
        proc = start()
        t0, first, kill_at = time.time(), inode(partial), rng.uniform(0.2, 1.0) * duration
        ready = {"random": lambda: time.time() - t0 >= kill_at,
                 "partial replaced": lambda: inode(partial) not in (None, first),
                 "final checkpoint written": ckpt.exists}[when]
        if _wait_then_kill(proc, ready):
            kills.append(when)
    last = start()
    out, _ = last.communicate()
    print(f"\n{address}: killed {kills}; the last run: {[l for l in out.splitlines() if 'resuming' in l]}")
    assert last.returncode == 0, out
    if kills[-1:] == ["final checkpoint written"]:
        steps = section["steps"]
        assert f"resuming from {partial.relative_to(repo)} at step {steps}" in out
    assert {o: md5(repo / o) for o in outs} == reference, f"kills: {kills}"
    assert not partial.exists() and not [t for o in outs for t in (repo / o).parent.glob(".*.tmp")]

    # Killed as soon as its first resume checkpoint exists, a run resumes from it, not from scratch.
    assert _wait_then_kill(start(), partial.exists), "the run ended before it wrote a resume checkpoint"
    resumed = start()
    out, _ = resumed.communicate()
    assert resumed.returncode == 0, out
    found = re.search(rf"resuming from {re.escape(str(partial.relative_to(repo)))} at step (\d+)", out)
    assert found and int(found.group(1)) >= section["log_every"], out
    assert {o: md5(repo / o) for o in outs} == reference
    assert kills, "no kill landed"


def test_two_dvc_repro_at_once_end_consistent(repo):
    """Whatever the two runs did between them, every stage `dvc status` calls up to date has the outputs dvc.lock
    records, and a third run completes the DAG."""
    set_params(repo, lambda p: p["sweep"]["ddim-4"].update(eta=0.5))
    procs = [subprocess.Popen(["dvc", "repro"], cwd=repo, env=stage_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    print("\nexit codes of the two runs:", [p.returncode for p in procs])
    pending = json.loads(run(["dvc", "status", "--json"], repo).stdout)
    for stage, entry in lock_entries(repo).items():
        if stage not in pending:
            for out in entry.get("outs", []):
                assert md5(repo / out["path"]) == out["md5"], (stage, out["path"], outs)
    run(["dvc", "repro"], repo)
    assert "Data and pipelines are up to date" in run(["dvc", "status"], repo).stdout


# --- the params fuzz ---------------------------------------------------------------------------------------------

def _fault_params() -> dict:
    with tempfile.TemporaryDirectory() as d:
        write_params(Path(d), TINY, SMALL_SWEEPS)
        return yaml.safe_load((Path(d) / "params.yaml").read_text())


FAULT_PARAMS = _fault_params()


def _leaves(node, path=()):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, (*path, k))
    else:
        yield path


LEAVES = list(_leaves(FAULT_PARAMS))
SECTIONS = [p[:i] for p in LEAVES for i in range(1, len(p))]
VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70), st.sampled_from([0, -1, 1, 2**63 - 1, 2**63, 2**64]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -0.0, 1e-300, 1e300, 1.5, 2.0]),
    st.text(max_size=20), st.sampled_from(["$(touch x)", "a/b", "..", "ddpm", "ddim", "mlp", "linear"]),
    st.lists(st.integers(-3, 5), max_size=3), st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))
MUTATIONS = st.one_of(
    st.tuples(st.just("set"), st.sampled_from(LEAVES), VALUES),
    st.tuples(st.just("delete"), st.sampled_from(LEAVES), st.none()),
    st.tuples(st.just("add"), st.sampled_from(SECTIONS), st.tuples(st.text(max_size=12), VALUES)),
)


def _mutate(raw: dict, mutation) -> dict:
    kind, path, value = mutation
    node = raw
    for k in path[:-1] if kind != "add" else path:
        node = node[k]
    if kind == "set":
        node[path[-1]] = value
    elif kind == "delete":
        del node[path[-1]]
    else:
        node[value[0]] = value[1]
    return raw


def _check_contract(obj, key: str = "") -> None:
    """What a validated Params promises: finite numbers, 64-bit integers, seeds in [0, 2^63), safe cell names."""
    if dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            _check_contract(getattr(obj, f.name), f"{key}.{f.name}")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _check_contract(v, f"{key}.{k}")
    elif isinstance(obj, list):
        for v in obj:
            _check_contract(v, key)
    elif isinstance(obj, float):
        assert np.isfinite(obj), key
    elif isinstance(obj, int) and not isinstance(obj, bool):
        assert -INT64 <= obj < INT64, key
        if key.endswith("seed"):
            assert obj >= 0, key


def _outcome(path: Path) -> str | None:
    """None if `path` validates (and keeps the contract), else its one-line error."""
    try:
        params = load_params(path)
    except ParamsError as e:
        message = str(e)
        assert "\n" not in message and message.startswith(f"{path}: ") and len(message) < 500, message
        return message
    _check_contract(params)
    for section in (params.sweep, params.guided_sweep, params.exact_sweep):
        assert all(NAME.fullmatch(name) for name in section)
    return None


@settings(max_examples=400, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(mutation=MUTATIONS)
def test_fuzzed_params_are_valid_or_one_line_errors(mutation, tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "params.yaml"
    raw = _mutate(yaml.safe_load(yaml.safe_dump(FAULT_PARAMS)), mutation)
    try:
        path.write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))
    except yaml.YAMLError:  # a value PyYAML cannot write is no params file
        return
    _outcome(path)


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(offset=st.floats(0, 1), insert=st.binary(min_size=1, max_size=8), duplicate=st.booleans())
def test_fuzzed_params_bytes_are_valid_or_one_line_errors(offset, insert, duplicate, tmp_path_factory):
    """Raw bytes spliced into the file (non-UTF-8, broken YAML), or one of its lines written twice (duplicate keys)."""
    path = tmp_path_factory.mktemp("fuzz") / "params.yaml"
    data = yaml.safe_dump(FAULT_PARAMS, sort_keys=False).encode()
    if duplicate:
        lines = data.splitlines(keepends=True)
        i = int(offset * (len(lines) - 1))
        data = b"".join(lines[: i + 1] + [lines[i]] + lines[i + 1:])
    else:
        i = int(offset * len(data))
        data = data[:i] + insert + data[i:]
    path.write_bytes(data)
    _outcome(path)


# A cell's keys set to values some cell of params.yaml holds (so that many mutations pass validation and run) or to
# any value; a copy of ddim-4 added under a valid name or any text.
CELL_SETTINGS = st.sampled_from(["ddpm", "iddpm", "ddim", "small", "large", "learned", 1, 2, 4, 5, 0.0, 0.5, 1.0])
CELL_MUTATIONS = st.one_of(
    st.tuples(st.just("set"), st.sampled_from([p for p in LEAVES if p[0] == "sweep"]), st.one_of(CELL_SETTINGS, VALUES)),
    st.tuples(st.just("add"), st.just(("sweep",)),
              st.tuples(st.one_of(st.from_regex(NAME, fullmatch=True), st.text(max_size=10)),
                        st.just(SMALL_SWEEPS["sweep"]["ddim-4"]))),
)


def _cell_ran(repo: Path, proc: subprocess.CompletedProcess, before: dict, cell: str) -> None:
    """A cell mutation that passed validation: the loader accepts the file, `dvc status` is clean, the cell's sample
    stage ran and wrote what dvc.lock records, the table lists it, and no stage but the cell's and the aggregates
    (validate, table, claims) changed its lock entry."""
    assert _outcome(repo / "params.yaml") is None
    assert "Data and pipelines are up to date" in run(["dvc", "status"], repo).stdout
    assert f"Running stage 'sample@{cell}'" in proc.stdout, proc.stdout
    after = lock_entries(repo)
    for stage, entry in after.items():
        for out in entry.get("outs", []):
            assert md5(repo / out["path"]) == out["md5"], f"{stage}: {out['path']} not as dvc.lock records"
    assert {f"samples/{cell}.npz", f"metrics/timing/{cell}.json"} <= {o["path"] for o in after[f"sample@{cell}"]["outs"]}
    assert cell in (repo / "metrics/trilemma.md").read_text()
    changed = {k for k in after.keys() | before.keys() if after.get(k) != before.get(k)}
    assert changed <= {"validate", f"sample@{cell}", "table", "claims"}, changed


def test_fuzzed_cells_through_dvc_repro_run_or_lose_nothing(built, tmp_path):
    """Through `dvc repro` itself: a cell mutation either fails in one line with every output as it was, or runs to a
    clean `dvc status` with the cell's outputs. The examples run one after another on one copy of the built checkout
    (a refused one leaves it as it was; one that ran is the next one's starting point), and both branches must be
    taken: a generator whose every cell is refused would test only the loader."""
    repo = copy_of(built, tmp_path / "repo")
    taken = []

    @settings(max_examples=4, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(mutation=CELL_MUTATIONS)
    def one_cell(mutation):
        text = (repo / "params.yaml").read_text()
        params = yaml.safe_load(text)
        mutated = _mutate(copy.deepcopy(params), mutation)
        assume(mutated != params)  # a no-op mutation tests nothing
        try:
            (repo / "params.yaml").write_text(yaml.safe_dump(mutated, sort_keys=False, allow_unicode=True))
        except yaml.YAMLError:  # a value PyYAML cannot write is no params file
            (repo / "params.yaml").write_text(text)
            assume(False)
        before = lock_entries(repo)
        proc = run(["dvc", "repro"], repo, check=False)
        if proc.returncode == 0:
            _cell_ran(repo, proc, before, mutation[1][1] if mutation[0] == "set" else mutation[2][0])
            taken.append("ran")
        else:
            assert len(error_lines(proc)) == 1 and error_lines(proc)[0].startswith("error: params.yaml: "), proc.stderr
            assert "Running stage 'validate'" in proc.stdout and proc.stdout.count("Running stage") == 1
            assert_nothing_lost(repo, before)
            (repo / "params.yaml").write_text(text)
            taken.append("refused")
        print(f"\n{mutation!r}: {taken[-1]}")

    one_cell()
    assert set(taken) == {"ran", "refused"}, taken
