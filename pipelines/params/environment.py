"""What params name outside the repository is there: the files in data/external, a GPU for runtime.device cuda, and
a device for each of runtime.processes.

Apart from the loader because it reads the machine, not the file: the validate stage and a profile's workspace
call it, so a run without them stops before any compute (and a training stage calls `check_processes` itself before
it starts its ranks).
"""

from __future__ import annotations

import os
from pathlib import Path

from pipelines.plumbing.errors import ParamsError
from pipelines.params.fields import EXTERNAL_DIR
from pipelines.params.schema import Params
from pipelines.params.sections import RuntimeParams


def check_environment(p: Params, external: str | Path = EXTERNAL_DIR) -> None:
    """What params name outside the repository is there: the files in `external` (the workspace's EXTERNAL_DIR)
    and, for runtime.device cuda, a GPU; a device for each of runtime.processes (`check_processes`). ParamsError
    naming the key otherwise, so a run without them stops before any compute (the validate stage, and a profile's
    workspace, call this). The stages that read the files check their contents."""
    if p.runtime.device == "cuda":
        import torch  # here only: parsing params never loads torch

        if not torch.cuda.is_available():
            raise ParamsError(f"runtime.device: 'cuda', but torch {torch.__version__} sees no GPU on this machine "
                              "(torch.cuda.is_available() is False); use auto (the GPU where there is one) or cpu")
    check_processes(p.runtime)
    for key, path, kind in (("data.path", p.data.path, "folder"), ("evaluate.weights", p.evaluate.weights, "file")):
        where = None if path is None else Path(external, Path(path).relative_to(EXTERNAL_DIR))
        if where is not None and not (where.is_dir() if kind == "folder" else where.is_file()):
            what = {"data.path": "CIFAR-10's python batches (cifar-10-batches-py)",
                    "evaluate.weights": "torch-fidelity's Inception weights"}[key]
            raise ParamsError(f"{key}: no {kind} {path}: nothing is downloaded; put {what} there, or link it "
                              f"({EXTERNAL_DIR}/README.md)")


def check_processes(p: RuntimeParams) -> None:
    """runtime.processes ranks fit this machine, one device each: at most its visible GPUs on device cuda (or auto
    where CUDA is available), at most the CPU cores this process may run on otherwise. ParamsError naming the key."""
    if p.processes == 1:
        return
    if p.device != "cpu":
        import torch  # here only: parsing params never loads torch

        if torch.cuda.is_available():
            gpus = torch.cuda.device_count()
            if p.processes > gpus:
                raise ParamsError(f"runtime.processes: {p.processes} ranks need a GPU each, but this machine shows "
                                  f"{gpus} (device {p.device}); use at most {gpus}")
            return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if p.processes > cores:
        raise ParamsError(f"runtime.processes: {p.processes} ranks on the CPU, but this machine gives the run {cores} "
                          f"core{'s' if cores > 1 else ''}; use at most {cores}")
