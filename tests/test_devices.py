"""Every tensor the project's code creates names its device, so nothing lands on the CPU by default on a GPU.

A check over the source, not a run: on a CPU-only machine a tensor created without `device=` lands on the runtime's
device by accident (both are the CPU), so no run here can tell a forgotten device from a right one, and a run sees
only the paths it takes. The rule is syntactic instead: each call of a torch function that creates a tensor or a
generator from scratch names its device, `device="cpu"` where it must stay on the host (ground truth, a diagnostic
whose noise is the same on every device). It cannot miss a call like the evaluator's `torch.randint(...,
generator=g)` beside a CUDA generator: that call names no device. Functions that take their device from a tensor
(`*_like`, `Tensor.new_*`, `torch.multinomial`) are not factories here; a factory imported under another name
(`from torch import zeros`) is refused outright.
"""

from __future__ import annotations

import ast

import pytest

from conftest import ROOT

# torch functions that create a tensor (or a generator) on the default device unless told otherwise
FACTORIES = {"arange", "as_tensor", "empty", "eye", "full", "Generator", "linspace", "logspace", "ones", "rand",
             "randint", "randn", "randperm", "range", "tensor", "zeros"}
SOURCES = sorted(p for d in ("components", "pipelines") for p in (ROOT / d).rglob("*.py"))


def unplaced(source: str) -> list[tuple[int, str]]:
    """(line, call) of every torch factory call in `source` that names no device, and of every factory import."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module == "torch":
            found += [(node.lineno, f"from torch import {a.name}") for a in node.names if a.name in FACTORIES]
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"
                and node.func.attr in FACTORIES):
            continue
        named = any(k.arg == "device" for k in node.keywords)
        positional = node.func.attr == "Generator" and node.args  # torch.Generator(device)
        if not (named or positional):
            found.append((node.lineno, f"torch.{node.func.attr}"))
    return sorted(found)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_tensor_factory_names_its_device(path):
    bad = unplaced(path.read_text())
    assert not bad, "\n".join(f"{path.relative_to(ROOT)}:{line}: {call} names no device" for line, call in bad)


def test_the_check_finds_the_evaluators_old_draws():
    """The calls that would have crashed the evaluator stage on CUDA, as they were written."""
    old = ("import torch\n"
           "idx = torch.randint(len(x), (batch_size,), generator=g)\n"
           "rows = (s - shifts[:, 0, None] + torch.arange(h))[:, :, None]\n"
           "g = torch.Generator().manual_seed(0)\n"
           "from torch import zeros\n"
           "ok = torch.randint(9, (2,), generator=g, device=g.device) + torch.zeros_like(x) + x.new_zeros(2)\n")
    assert unplaced(old) == [(2, "torch.randint"), (3, "torch.arange"), (4, "torch.Generator"),
                             (5, "from torch import zeros")]
