"""Every choice params.yaml names (networks, samplers, feature extractors, timestep samplers), by name.

One pattern for all of them: a `Registry` maps a name to "module:attribute" and imports it on the
first lookup, so naming a choice, and validating params (pipelines/params/), imports no torch:
validation takes a fraction of a second instead of torch's two. A network's constructor options
are read from its module's source (`Registry.parameters`), also without importing it;
tests/pipelines/params/test_params.py checks them against the imported class's signature.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import threading
from collections.abc import Iterator, Mapping
from functools import cache
from typing import Any

NO_DEFAULT = object()


class Registry(Mapping[str, Any]):
    """Names of one kind of choice -> the objects they name, imported when first looked up."""

    def __init__(self, kind: str, entries: dict[str, str]):
        self.kind = kind
        self._entries = dict(entries)  # name -> "module:attribute"

    def __getitem__(self, name: str) -> Any:
        if name not in self._entries:
            raise KeyError(f"unknown {self.kind} {name!r}; allowed: {', '.join(self._entries)}")
        module, attribute = self._entries[name].split(":")
        return getattr(importlib.import_module(module), attribute)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def parameters(self, name: str) -> dict[str, tuple[str, Any]]:
        """The constructor's keyword options of class `name`: option -> (annotation text, default or NO_DEFAULT)."""
        module, attribute = self._entries[name].split(":")
        return dict(_init_parameters(module, attribute))


_PARSE = threading.Lock()


def _parse(source: str, filename: str, tries: int = 3) -> ast.Module:
    """ast.parse, one thread at a time, retried on CPython 3.11's spurious "AST constructor recursion depth mismatch":
    the AST builder's depth counter is shared by the interpreter's threads (python/cpython#106905), and a served
    Prefect flow validates params in a worker thread while Prefect compiles code in another (seen failing a sweep)."""
    for attempt in range(tries):
        try:
            with _PARSE:
                return ast.parse(source, filename)
        except SystemError as e:
            if "recursion depth mismatch" not in str(e) or attempt == tries - 1:
                raise
    raise AssertionError("unreachable")


@cache
def _init_parameters(module: str, cls: str) -> tuple[tuple[str, tuple[str, Any]], ...]:
    """Parse `module`'s source for `cls.__init__`'s parameters (self left out), without importing the module."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ImportError(f"no module {module}")
    with open(spec.origin, encoding="utf-8") as f:
        tree = _parse(f.read(), spec.origin)
    node = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls), None)
    init = node and next((n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
    if init is None:
        raise LookupError(f"{module}.{cls} defines no __init__ of its own")
    args = init.args.args[1:]
    defaults = [NO_DEFAULT] * (len(args) - len(init.args.defaults)) + [ast.literal_eval(d) for d in init.args.defaults]
    out = [(a.arg, (ast.unparse(a.annotation) if a.annotation else "", d)) for a, d in zip(args, defaults)]
    kw_defaults = [NO_DEFAULT if d is None else ast.literal_eval(d) for d in init.args.kw_defaults]
    out += [(a.arg, (ast.unparse(a.annotation) if a.annotation else "", d))
            for a, d in zip(init.args.kwonlyargs, kw_defaults)]
    return tuple(out)


# Denoisers eps_theta(x_t, t) (DDPM, iDDPM with a variance output), ADM's noise-aware classifiers p_phi(y | x_t, t),
# and DDGAN's generators G(x_t, z, t) and discriminators D(x_{t-1}, x_t, t).
NETWORKS = Registry("network", {"mlp": "components.networks.mlp:MLP", "unet": "components.networks.unet:UNet"})
CLASSIFIERS = Registry("classifier", {"mlp": "components.networks.mlp:MLPClassifier"})
GENERATORS = Registry("generator", {"mlp": "components.networks.mlp:MLPGenerator",
                                    "plain_mlp": "components.networks.mlp:PlainMLPGenerator"})
DISCRIMINATORS = Registry("discriminator", {"mlp": "components.networks.mlp:MLPDiscriminator",
                                            "plain_mlp": "components.networks.mlp:PlainMLPDiscriminator"})

# The eps-model samplers a sweep cell chooses from: DDPM's ancestral sampler (Ho et al. Alg. 2) and DDIM
# (Song et al. eq. 12).
SAMPLERS = Registry("sampler", {"ddpm": "components.sampling.samplers:sample_ddpm", "ddim": "components.sampling.samplers:sample_ddim"})

# Feature extractors for FID, KID, precision/recall and the classifier score (components/scoring/features.py): points are
# their own features; digits go through the classifier stage evaluator trains; CIFAR-10 through torch-fidelity's
# Inception, from a local weights file.
FEATURE_EXTRACTORS = Registry("feature extractor", {
    "identity": "components.scoring.features:identity_extractor",
    "lenet": "components.scoring.features:lenet_extractor",
    "inception": "components.scoring.features:inception_extractor",
})

# iDDPM's timestep samplers: uniform t, or importance sampling by the loss's second moment (iDDPM §3.3).
TIMESTEP_SAMPLERS = Registry("timestep sampler", {
    "uniform": "components.training.steps:UniformTimesteps",
    "loss_second_moment": "components.training.steps:LossSecondMomentTimesteps",
})

# Reverse-process variances: beta-tilde, beta (DDPM §3.2), learned (iDDPM §3.1).
VARIANCES = ("small", "large", "learned")
LR_SCHEDULES = ("constant", "cosine")  # after linear warm-up

# Where networks run (components/networks/runtime.py): auto is the GPU lent to the stage, else the CPU; bf16 autocasts the
# network's forward pass.
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16")
