"""What params name outside the repository is there: the files in data/external, and a GPU for runtime.device cuda.

Apart from the loader because it reads the machine, not the file: the validate stage and a profile's workspace
call it, so a run without them stops before any compute.
"""

from __future__ import annotations

from pathlib import Path

from pipelines.plumbing.errors import ParamsError
from pipelines.params.fields import EXTERNAL_DIR
from pipelines.params.schema import Params


def check_environment(p: Params, external: str | Path = EXTERNAL_DIR) -> None:
    """What params name outside the repository is there: the files in `external` (the workspace's EXTERNAL_DIR)
    and, for runtime.device cuda, a GPU. ParamsError naming the key otherwise, so a run without them stops before
    any compute (the validate stage, and a profile's workspace, call this). The stages that read the files check
    their contents."""
    if p.runtime.device == "cuda":
        import torch  # here only: parsing params never loads torch

        if not torch.cuda.is_available():
            raise ParamsError(f"runtime.device: 'cuda', but torch {torch.__version__} sees no GPU on this machine "
                              "(torch.cuda.is_available() is False); use auto (the GPU where there is one) or cpu")
    for key, path, kind in (("data.path", p.data.path, "folder"), ("evaluate.weights", p.evaluate.weights, "file")):
        where = None if path is None else Path(external, Path(path).relative_to(EXTERNAL_DIR))
        if where is not None and not (where.is_dir() if kind == "folder" else where.is_file()):
            what = {"data.path": "CIFAR-10's python batches (cifar-10-batches-py)",
                    "evaluate.weights": "torch-fidelity's Inception weights"}[key]
            raise ParamsError(f"{key}: no {kind} {path}: nothing is downloaded; put {what} there, or link it "
                              f"({EXTERNAL_DIR}/README.md)")

