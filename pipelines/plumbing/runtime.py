"""A stage's runtime: params `runtime` resolved to a device (components/networks/runtime.py), the one place stages read it."""

from __future__ import annotations

from components.networks.runtime import Runtime, configure_backends, make_runtime
from pipelines.params import Params, load_params
from pipelines.params.sections import RuntimeParams
from pipelines.plumbing.distributed import local_rank


def runtime_of(p: RuntimeParams, local_rank: int = 0) -> Runtime:
    """The runtime params ask for: device resolved (auto: the GPU the Prefect flow lent the stage, else the CPU; for
    torchrun rank `local_rank` of a training stage, the GPU of that number)."""
    return make_runtime(p.device, p.precision, p.channels_last, p.compile, p.deterministic, local_rank)


def stage_runtime(params: Params | None = None) -> Runtime:
    """This stage's runtime, from params.yaml unless `params` is given, on this rank's own GPU in a training stage run
    as several ranks (pipelines/plumbing/distributed.py); on CUDA, its math switches set for the process
    (`configure_backends`: TF32 and cuDNN autotuning unless runtime.deterministic)."""
    rt = runtime_of((params or load_params()).runtime, local_rank())
    configure_backends(rt)
    return rt
