"""Where and how networks run: device, precision (fp32 or bf16 autocast), channels_last, torch.compile.

A `Runtime` is chosen once per stage and passed down; the math never asks for it. Weights stay fp32;
bf16 autocast covers only the network's forward pass (`forward_fn`), so schedule tables (float64),
the losses and the samplers' updates keep their precision. Nothing here reads the environment:
the stage names the device ("auto", "cpu" or "cuda") and `resolve_device` turns it into a torch.device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from components.networks.options import DEVICES, PRECISIONS

Forward = Callable[..., torch.Tensor]  # (x_t, t) -> network output; DDGAN's G (x_t, t, z), D (x_{t-1}, x_t, t)


@dataclass(frozen=True)
class Runtime:
    """The device a stage runs on and how its networks' forward passes run there."""

    device: torch.device
    precision: str = "fp32"  # fp32 | bf16 (autocast for the forward pass; weights stay fp32)
    channels_last: bool = False  # NHWC memory format for 4-D inputs and the network's conv weights
    compile: bool = False  # torch.compile the forward pass
    deterministic: bool = False  # CUDA: no TF32, no cuDNN autotuning (bitwise studies); the CPU is always so

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; allowed: {', '.join(PRECISIONS)}")
        object.__setattr__(self, "device", torch.device(self.device))


CPU = Runtime(torch.device("cpu"))  # the default: fp32, eager, contiguous


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """"cpu", "cuda" (cuda:<local_rank>; an error if CUDA is unavailable) or "auto" (cuda:<local_rank> when
    available, else cpu).

    cuda:0 is the first *visible* GPU: the Prefect flow lends a stage a GPU by setting
    CUDA_VISIBLE_DEVICES for its process, so cuda:0 is the lent one. A training stage run as several torchrun
    ranks gives each rank its own GPU, the one numbered by its rank on this machine (`local_rank`).
    """
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("runtime device 'cuda' was asked for, but torch.cuda.is_available() is False (no GPU "
                               f"visible, or torch {torch.__version__} was built without CUDA); use 'auto' or 'cpu'")
        return torch.device("cuda", local_rank)
    if name == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    raise ValueError(f"unknown device {name!r}; allowed: {', '.join(DEVICES)}")


def make_runtime(device: str = "auto", precision: str = "fp32", channels_last: bool = False,
                 compile: bool = False, deterministic: bool = False, local_rank: int = 0) -> Runtime:
    """A Runtime from the names a params section holds (`resolve_device` for the device, that of torchrun rank
    `local_rank` on this machine)."""
    return Runtime(resolve_device(device, local_rank), precision, channels_last, compile, deterministic)


def configure_backends(rt: Runtime) -> None:
    """On CUDA, the process-wide math switches rt asks for; nothing on the CPU.

    Fast (the default): TF32 tensor cores for fp32 matmuls and convolutions (10 mantissa bits in the
    products, fp32 accumulation: Ampere and later) and cuDNN's autotuner, which times the convolution
    algorithms once per input shape; a training step's shapes never change, so it pays off from the
    second step. deterministic: IEEE fp32 products, and cuDNN's deterministic algorithms, for studies that
    compare runs bit for bit.
    """
    if rt.device.type != "cuda":
        return
    fast = not rt.deterministic
    torch.backends.cuda.matmul.allow_tf32 = fast
    torch.backends.cudnn.allow_tf32 = fast
    torch.backends.cudnn.benchmark = fast
    torch.backends.cudnn.deterministic = not fast


def forward_fn(net: nn.Module, rt: Runtime, *, sampling: bool = False) -> Forward:
    """The callable losses and samplers call instead of `net`: (x_t, t, ...) -> output in x_t's dtype (float32).

    The inputs are `net`'s own, in its order (DDGAN's G takes (x_t, t, z), its D (x_{t-1}, x_t, t)); the
    output has the first input's dtype. Moves nothing: the caller puts `net` on rt.device. channels_last
    converts `net`'s 4-D weights in place and each 4-D input; compile wraps the forward with
    torch.compile while `net` itself stays the module whose state_dict is saved (no `_orig_mod.` keys); bf16
    runs the forward under bfloat16 autocast (matmuls and convs in bf16, reductions as autocast decides) and
    casts the output back.

    sampling: the caller is a sampler, under no_grad, calling with one shape a batch. With compile on CUDA the
    network then also runs as a CUDA graph (mode "reduce-overhead"): one launch replays a whole evaluation's
    kernels, where a small network's steps would otherwise wait on Python. A replay reuses its output
    buffer, so each call marks a new step and returns a copy the sampler may keep.
    """
    if rt.channels_last:
        net.to(memory_format=torch.channels_last)  # in place; only 4-D parameters change
    graphs = sampling and rt.compile and rt.device.type == "cuda"
    call = torch.compile(net, mode="reduce-overhead" if graphs else None) if rt.compile else net
    autocast = rt.precision == "bf16"

    def forward(*inputs: torch.Tensor) -> torch.Tensor:
        if rt.channels_last:  # each (B, C, H, W) input with NHWC strides
            inputs = tuple(x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x for x in inputs)
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()  # the previous replay's output is no longer read
        if not autocast:
            out = call(*inputs)
        else:
            with torch.autocast(rt.device.type, dtype=torch.bfloat16):
                out = call(*inputs)
        return out.to(inputs[0].dtype, copy=graphs)

    return forward


def generator(rt: Runtime, seed: int) -> torch.Generator:
    """A seeded generator on rt.device (on the CPU, the same stream as torch.Generator().manual_seed(seed))."""
    return torch.Generator(device=rt.device).manual_seed(seed)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA kernels run asynchronously), so wall times measure it; no-op on CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def describe(rt: Runtime) -> str:
    """One line for logs, e.g. "cuda:0 (NVIDIA H200), bf16, channels_last" or "cpu (2 threads), fp32"."""
    if rt.device.type == "cuda":
        index = rt.device.index if rt.device.index is not None else torch.cuda.current_device()
        where = f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    elif rt.device.type == "cpu":
        threads = torch.get_num_threads()
        where = f"cpu ({threads} thread{'' if threads == 1 else 's'})"
    else:
        where = str(rt.device)
    fast = rt.device.type == "cuda" and not rt.deterministic
    return ", ".join([where, rt.precision] + [name for name, on in (("tf32", fast and rt.precision == "fp32"),
                                                                      ("channels_last", rt.channels_last),
                                                                      ("compile", rt.compile),
                                                                      ("deterministic", rt.deterministic)) if on])
