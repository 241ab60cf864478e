"""Every bad-params case fails before any compute, in one line that names the key and what is allowed."""

import copy
import hashlib
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pipelines.plumbing.errors import ParamsError
from pipelines.params import load_params, parse_params

from conftest import ROOT, edited, run, stage_env

DEFAULT = yaml.safe_load((ROOT / "params.yaml").read_text())


def with_change(path: str, value) -> dict:
    """The default params with the dotted key `path` set to value (None deletes it)."""
    return edited(DEFAULT, path.split("."), value)


def error_of(raw: dict) -> str:
    with pytest.raises(ParamsError) as e:
        parse_params(raw)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_default_params_are_valid():
    p = load_params(ROOT / "params.yaml")
    assert p.diffusion.T == 1000 and "ddpm-1000" in p.sweep


@pytest.mark.parametrize("path,value,expected", [
    # unknown keys, at every level
    ("sampel", {"n": 1}, "params.yaml: sampel: unknown key; allowed: data, diffusion, train_ddpm, finetune_iddpm, "
                         "train_sd2015, train_classifier, ddgan, train_ddgan, sample, timing, nll, guidance, sweep, "
                         "guided_sweep, exact_sweep, evaluate"),
    ("exact_sweep.exact-ddpm-4.model", "ddpm", "exact_sweep.exact-ddpm-4.model: unknown key; allowed: sampler, steps"),
    ("train_ddpm.learning_rate", 0.1, "train_ddpm.learning_rate: unknown key; allowed: seed, steps, batch_size, lr"),
    ("sweep.ddim-50.etaa", 0.5, "sweep.ddim-50.etaa: unknown key; allowed: sampler, steps, trajectory, eta"),
    ("train_ddpm.network.widht", 64, "train_ddpm.network.widht: unknown key for network 'mlp'; allowed: name, width"),
    # missing keys
    ("train_ddpm.lr", None, "train_ddpm.lr: missing key"),
    ("sweep.ddpm-4.model", None, "sweep.ddpm-4.model: missing key"),
    ("finetune_iddpm.lambda_vlb", None, "finetune_iddpm.lambda_vlb: missing key"),
    # wrong types
    ("train_ddpm.steps", "many", "train_ddpm.steps: expected an integer, got 'many'"),
    ("train_ddpm.steps", 10.5, "train_ddpm.steps: expected an integer, got 10.5"),
    ("train_ddpm.lr", "fast", "train_ddpm.lr: expected a number, got 'fast'"),
    ("sample.n", True, "sample.n: expected an integer, got True"),
    ("sweep.ddpm-4.clip_x0", "yes", "sweep.ddpm-4.clip_x0: expected true or false, got 'yes'"),
    ("train_ddpm.network.width", "wide", "train_ddpm.network.width: expected an integer, got 'wide'"),
    ("sweep", [1, 2], "sweep: expected a mapping"),
    # steps > T or <= 0
    ("sweep.ddpm-1000.steps", 1001, "sweep.ddpm-1000.steps: 1001 exceeds diffusion.T = 1000; allowed: 1..1000"),
    ("sweep.ddim-4.steps", 0, "sweep.ddim-4.steps: must be in [1, 100,000], got 0"),
    ("sweep.ddim-4.steps", -4, "sweep.ddim-4.steps: must be in [1, 100,000], got -4"),
    # eta < 0, and options that belong to the other sampler
    ("sweep.ddim-50.eta", -0.5, "sweep.ddim-50.eta: must be in [0, 1], got -0.5"),
    ("sweep.ddpm-100.eta", 0.5, "sweep.ddpm-100.eta: applies to sampler ddim only"),
    # unknown names
    ("sweep.ddpm-4.sampler", "euler", "sweep.ddpm-4.sampler: unknown sampler 'euler'; allowed: ddpm, ddim"),
    ("train_ddpm.network.name", "unet9000", "train_ddpm.network.name: unknown network 'unet9000'; allowed: mlp"),
    ("diffusion.schedule", "sigmoid", "diffusion.schedule: unknown schedule 'sigmoid'; allowed: linear, cosine, ddgan_vp, logsnr_linear"),
    ("sweep.ddim-10.trajectory", "leading", "sweep.ddim-10.trajectory: unknown trajectory 'leading'; allowed: uniform, linspace, quadratic"),
    ("sweep.ddpm-10.variance", "medium", "sweep.ddpm-10.variance: unknown variance 'medium'; allowed: small, large, learned"),
    ("finetune_iddpm.timestep_sampler", "importance",
     "finetune_iddpm.timestep_sampler: unknown timestep sampler 'importance'; allowed: uniform, loss_second_moment"),
    ("evaluate.features", "vgg", "evaluate.features: unknown feature extractor 'vgg'; allowed: identity, lenet, "
                                 "inception"),
    ("evaluate.features", "inception", "evaluate.weights: required for features inception (a local file: nothing is "
                                       "downloaded)"),
    ("evaluate.features", "lenet", "evaluate.train: required for features lenet (stage evaluator trains it)"),
    ("evaluate.weights", "../weights.pth", "evaluate.weights: not an option for features 'identity' (inception only)"),
    ("data.path", "data/external/cifar", "data.path: not an option for data set 'gaussians25' (it reads std)"),
    ("data.std", None, "data.std: required for data set 'gaussians25' (it reads std)"),
    ("data.hflip", True, "data.hflip: flips images only"),
    ("data.name", "mnist", "data.std: not an option for data set 'mnist' (it reads no options)"),
    ("runtime.device", "tpu", "runtime.device: unknown device 'tpu'; allowed: auto, cpu, cuda"),
    ("runtime.precision", "fp16", "runtime.precision: unknown precision 'fp16'; allowed: fp32, bf16"),
    ("runtime.compile", "yes", "runtime.compile: expected true or false, got 'yes'"),
    ("runtime.deterministic", "yes", "runtime.deterministic: expected true or false, got 'yes'"),
    ("runtime.processes", 0, "runtime.processes: must be in [1, 1,024], got 0"),
    ("runtime.processes", 1.5, "runtime.processes: expected an integer, got 1.5"),
    ("runtime.processes", 3, "train_ddpm.batch_size: 1024 is not divisible by runtime.processes 3 (each rank trains "
                             "on an equal share of the batch)"),
    ("sweep.ddpm-100.n", 2, "sweep.ddpm-100.n: 2 samples; precision/recall need more than evaluate.k = 3"),
    ("sweep.ddim-4.model", "oracle", "sweep.ddim-4.model: unknown model 'oracle'; allowed: ddpm, iddpm"),
    # a learned variance needs a model that has one
    ("sweep.ddpm-10.variance", "learned", "sweep.ddpm-10.variance: 'learned' needs a model with a variance output; "
                                          "allowed: model iddpm"),
    ("exact_sweep.exact-ddpm-4.variance", "learned", "exact_sweep.exact-ddpm-4.variance: 'learned' needs a model with"),
    ("data.name", "cifar11", "data.name: unknown data set 'cifar11'; allowed: gaussians25"),
    ("train_ddpm.lr_schedule", "step", "train_ddpm.lr_schedule: unknown lr schedule 'step'; allowed: constant, cosine"),
    # ranges
    ("train_ddpm.ema_decay", 1.0, "train_ddpm.ema_decay: must be in [0, 1)"),
    ("diffusion.T", 1, "diffusion.T: must be in [2, 100,000], got 1"),
    ("train_ddpm.checkpoint_every", 75, "train_ddpm.checkpoint_every: must be a multiple of log_every"),
    ("finetune_iddpm.checkpoint_every", 75, "finetune_iddpm.checkpoint_every: must be a multiple of log_every"),
    ("finetune_iddpm.lambda_vlb", -0.001, "finetune_iddpm.lambda_vlb: must be >= 0, got -0.001"),
    ("finetune_iddpm.importance_uniform", 0.0, "finetune_iddpm.importance_uniform: must be in (0, 1]"),
    ("nll.n", 20000, "nll.n: 20000 exceeds data.n_reference = 10000"),
    ("nll.batch_size", 0, "nll.batch_size: must be in [1, 1,000,000], got 0"),
    # classifier guidance
    ("guided_sweep.ddim-50-s1.scale", -1.0, "guided_sweep.ddim-50-s1.scale: must be >= 0, got -1.0"),
    ("guided_sweep.ddim-50-s1.scale", None, "guided_sweep.ddim-50-s1.scale: missing key"),
    ("guided_sweep.ddim-50-s1.scale", "strong", "guided_sweep.ddim-50-s1.scale: expected a number, got 'strong'"),
    ("guided_sweep.ddim-50-s1.model", None, "guided_sweep.ddim-50-s1.model: missing key"),
    ("guided_sweep.ddpm-250-s1.steps", 1001, "guided_sweep.ddpm-250-s1.steps: 1001 exceeds diffusion.T = 1000"),
    ("guided_sweep.ddpm-250-s1.variance", "learned", "guided_sweep.ddpm-250-s1.variance: 'learned' needs a model with"),
    ("sweep.ddim-50.scale", 1.0, "sweep.ddim-50.scale: a guided cell reads the classifier; allowed in guided_sweep "
                                 "(trained classifier) and exact_sweep (exact p(y | x_t))"),
    ("exact_sweep.exact-ddim-50-s1.scale", -2, "exact_sweep.exact-ddim-50-s1.scale: must be >= 0, got -2.0"),
    ("train_classifier.network.name", "resnet", "train_classifier.network.name: unknown network 'resnet'; allowed: mlp"),
    ("train_classifier.network.n_classes", 10, "train_classifier.network.n_classes: unknown key for network 'mlp'; "
                                               "allowed: name, width, depth, temb_dim"),
    ("train_classifier.weight_decay", -0.1, "train_classifier.weight_decay: must be >= 0, got -0.1"),
    ("train_classifier.accuracy_buckets", 0, "train_classifier.accuracy_buckets: must be >= 1"),
    ("train_classifier.accuracy_buckets", 2000, "train_classifier.accuracy_buckets: 2000 exceeds diffusion.T = 1000"),
    ("train_classifier.weight_decay", None, "train_classifier.weight_decay: missing key"),
    ("guidance.label_seed", 0.5, "guidance.label_seed: expected an integer, got 0.5"),
    # DDGAN
    ("ddgan.T", [1, 0], "ddgan.T: every entry must be in [1, 100,000], got [1, 0]"),
    ("ddgan.T", [4, 4], "ddgan.T: entries must be distinct, got [4, 4]"),
    ("ddgan.T", 4, "ddgan.T: expected a list, got 4"),
    ("ddgan.T", [1, "two"], "ddgan.T[1]: expected an integer, got 'two'"),
    ("train_ddgan.schedule", "linear", "train_ddgan.schedule: 'linear' over ddgan.T = 2 steps: betas must lie in (0, 1]"),
    ("train_ddgan.adam_betas", [0.5], "train_ddgan.adam_betas: must be two numbers in [0, 1), got [0.5]"),
    ("train_ddgan.r1_every", 100, "train_ddgan.r1_every: must be in [1, log_every], so every logged window has an R1"),
    ("train_ddgan.r1_gamma", -1, "train_ddgan.r1_gamma: must be >= 0, got -1.0"),
    ("train_ddgan.lr_d", None, "train_ddgan.lr_d: missing key"),
    ("train_ddgan.generator.name", "stylegan", "train_ddgan.generator.name: unknown network 'stylegan'; allowed: mlp, plain_mlp"),
    ("train_ddgan.generator.fourier_octaves", -1, "train_ddgan.generator.fourier_octaves: must be in [0, 65,536], got -1"),
    ("train_ddgan.generator.nz", 0, "train_ddgan.generator.nz: must be in [1, 65,536], got 0"),
    ("train_ddgan.discriminator.nz", 8, "train_ddgan.discriminator.nz: unknown key for network 'plain_mlp'; allowed: name, "
                                        "width, depth, temb_dim, fourier_octaves"),
])
def test_bad_params_name_the_key(path, value, expected):
    assert expected in error_of(with_change(path, value))


def test_cell_names_are_unique_across_sweeps():
    raw = copy.deepcopy(DEFAULT)
    raw["exact_sweep"]["ddpm-4"] = {"sampler": "ddpm", "steps": 4}
    assert "exact_sweep.ddpm-4: the name is also a sweep cell; cell names must be unique" in error_of(raw)
    raw = copy.deepcopy(DEFAULT)
    raw["guided_sweep"]["ddim-50"] = {"model": "ddpm", "sampler": "ddim", "steps": 50, "scale": 1.0}
    assert "guided_sweep.ddim-50: the name is also a sweep cell; cell names must be unique" in error_of(raw)
    raw = copy.deepcopy(DEFAULT)
    raw["guided_sweep"]["ddim-50-s1.5"] = {"model": "ddpm", "sampler": "ddim", "steps": 50, "scale": 1.5}
    assert "guided_sweep: cell name 'ddim-50-s1.5' is not allowed: use 1 to 64 letters" in error_of(raw)
    raw = copy.deepcopy(DEFAULT)
    raw["exact_sweep"]["ddim-50-s1"] = {"sampler": "ddim", "steps": 50, "scale": 1.0}
    assert "exact_sweep.ddim-50-s1: the name is also a guided_sweep cell; cell names must be unique" in error_of(raw)


def test_ddgan_cells_follow_the_sweep_and_cannot_be_shadowed():
    p = load_params(ROOT / "params.yaml")
    names = list(p.cells())
    assert [n for n in names if n.startswith("ddgan-")] == [f"ddgan-{T}" for T in p.ddgan.T]
    assert names.index("ddim-eta1-50") < names.index("ddgan-1") < names.index("ddim-50-s0")
    cell = p.cells()["ddgan-4"]
    assert (cell.sampler, cell.steps, cell.model, cell.sampler_kwargs(), cell.has_likelihood) == ("ddgan", 4, "ddgan-4", {}, False)
    raw = copy.deepcopy(DEFAULT)
    raw["sweep"]["ddgan-4"] = {"model": "ddpm", "sampler": "ddim", "steps": 4}
    assert "sweep.ddgan-4: the name is also a ddgan cell; cell names must be unique" in error_of(raw)


def test_guided_cells_in_table_order_without_likelihood():
    p = load_params(ROOT / "params.yaml")
    names = list(p.cells())
    assert names.index("ddim-4") < names.index("ddim-50-s0") < names.index("exact-ddpm-1000")
    assert p.guided_sweep["ddpm-250-s2"].scale == 2.0 and p.sweep["ddpm-1000"].scale is None
    # a guided chain is not a model of p(x): no bound, even at s = 0; an unguided ancestral chain has one
    assert not p.guided_sweep["ddpm-250-s0"].has_likelihood and p.sweep["ddpm-100"].has_likelihood


def test_uniform_trajectories_take_any_step_count():
    """improved-diffusion's "ddim30" is stride 34 at T = 1000; where no stride gives the count (333), floor(i T / S)
    does: every count in [1, T] is a strictly increasing uniform trajectory from 0."""
    from components.math.schedules import uniform_trajectory

    assert list(uniform_trajectory(1000, 30)[:3]) == [0, 34, 68] and len(uniform_trajectory(1000, 30)) == 30
    assert parse_params(with_change("sweep.ddim-100.steps", 333)).sweep["ddim-100"].steps == 333
    for T in (7, 10, 1000):
        for steps in range(1, T + 1, max(1, T // 50)):
            ts = uniform_trajectory(T, steps)
            assert len(ts) == steps and ts[0] == 0 and ts[-1] < T and (np.diff(ts) > 0).all()


def _digest(paths):
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


DVC_STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
# The stages a bad param must stop, each at one address (its DVC_STAGE) of the default params: a cell, a DDGAN T.
ADDRESSES = ["prepare", "train_ddpm", "finetune_iddpm", "evaluator", "reference", "sample@ddim-50",
             "sample_exact@exact-ddim-4", "train_classifier", "sample_guided@ddim-50-s1", "train_ddgan@4",
             "sample_ddgan@4", "table"]


def stage_cmd(address: str) -> tuple[list[str], list[str]]:
    """Stage `address`'s command after `python -m` and the outputs it declares, as dvc.yaml writes them (`${key}` and
    `${item.T}` filled in with the address's item)."""
    name, _, item = address.partition("@")
    stage = DVC_STAGES[name].get("do", DVC_STAGES[name])
    cmd = shlex.split(stage["cmd"])
    assert cmd[:2] == ["python", "-m"], f"{name}: cmd is not `python -m <module> ...`"
    declared = [o for kind in ("outs", "metrics", "plots") for o in stage.get(kind, [])]
    outs = [(next(iter(o)) if isinstance(o, dict) else o).replace("${key}", item).replace("${item.T}", item)
            for o in declared]
    assert not [o for o in outs if "${" in o], outs
    return cmd[2:], outs


@pytest.mark.parametrize("address", ADDRESSES, ids=lambda a: a.partition("@")[0])
def test_stage_exits_nonzero_in_one_line_and_leaves_outputs(tmp_path, address):
    """A stage with bad params prints one line, exits 2, and its existing outputs keep their bytes."""
    raw = with_change("sweep.ddim-50.eta", -1.0)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    cmd, written = stage_cmd(address)
    outputs = [tmp_path / a for a in [*cmd[1:], *written] if "/" in a and Path(a).suffix]  # files, not folders
    for out in outputs:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(b"previous result " + out.name.encode())
    before = _digest(outputs)
    proc = subprocess.run([sys.executable, "-m", *cmd], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env=stage_env(PYTHONPATH=str(ROOT), DVC_STAGE=address))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: params.yaml: sweep.ddim-50.eta: must be in [0, 1], got -1.0"]
    assert _digest(outputs) == before
    assert not list(tmp_path.rglob("*.tmp"))


def test_validate_command(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(with_change("diffusion.schedule", "sigmoid")))
    proc = run([sys.executable, "-m", "pipelines.params", str(bad)], ROOT, check=False)
    assert proc.returncode == 2 and "diffusion.schedule: unknown schedule 'sigmoid'" in proc.stderr
    assert run([sys.executable, "-m", "pipelines.params"], ROOT).stdout.strip() == "params.yaml: ok; claims.yaml: ok"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_fails_at_validation_in_one_line(tmp_path):
    """runtime.device: cuda on a machine without CUDA stops the validate stage (the DAG's first), before any stage
    computes; auto would run on the CPU."""
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(with_change("runtime.device", "cuda")))
    proc = run([sys.executable, "-m", "pipelines.params", str(bad)], ROOT, check=False)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert re.fullmatch(r"error: runtime\.device: 'cuda', but torch \S+ sees no GPU on this machine "
                        r"\(torch\.cuda\.is_available\(\) is False\); use auto \(the GPU where there is one\) or cpu",
                        line), line


def test_more_processes_than_cores_fails_at_validation_in_one_line(tmp_path):
    """runtime.processes beyond the machine's devices (here its CPU cores, on device cpu) stops the validate stage in
    one line, before any stage computes; the training stage itself refuses it too (tests/pipelines/stages/
    test_torchrun.py)."""
    cores = len(os.sched_getaffinity(0))
    n = 1 << cores.bit_length()  # the first power of two above the cores: every default batch size divides by it
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(with_change("runtime.processes", n)))
    proc = run([sys.executable, "-m", "pipelines.params", str(bad)], ROOT, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: runtime.processes: {n} ranks on the CPU, but this machine gives the run {cores} "
        f"core{'s' if cores > 1 else ''}; use at most {cores}"]


def test_unreadable_params_file(tmp_path):
    (tmp_path / "params.yaml").write_text("data: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(tmp_path / "params.yaml")


def test_validating_params_imports_neither_torch_nor_mlflow():
    """The validate stage and `make repro`'s check start in a fraction of a second: no torch, no MLflow."""
    code = ("import sys; from pipelines.params import load_params; load_params(); "
            "print(sorted(m for m in ('torch', 'mlflow', 'torch_fidelity') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"


def test_declared_network_options_match_each_constructor():
    """Registry.parameters gives the options declared in components/networks/options.py; they must agree with the
    imported class's own signature."""
    import inspect

    from components.networks.registry import CLASSIFIERS, DISCRIMINATORS, GENERATORS, NETWORKS
    from components.registry import NO_DEFAULT

    for registry in (NETWORKS, CLASSIFIERS, GENERATORS, DISCRIMINATORS):
        for name in registry:
            sig = inspect.signature(registry[name])
            expected = {k: (p.annotation if isinstance(p.annotation, str) else p.annotation.__name__,
                            NO_DEFAULT if p.default is inspect.Parameter.empty else p.default)
                        for k, p in sig.parameters.items()}
            assert registry.parameters(name) == expected, (registry.kind, name)
