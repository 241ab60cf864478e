"""A stage's runtime: params `runtime` resolved to a device (components/runtime.py), the one place stages read it."""

from __future__ import annotations

from components.runtime import Runtime, make_runtime
from pipelines.params import Params, RuntimeParams, load_params


def runtime_of(p: RuntimeParams) -> Runtime:
    """The runtime params ask for: device resolved (auto: the GPU the Prefect flow lent the stage, else the CPU)."""
    return make_runtime(p.device, p.precision, p.channels_last, p.compile)


def stage_runtime(params: Params | None = None) -> Runtime:
    """This stage's runtime, from params.yaml unless `params` is given."""
    return runtime_of((params or load_params()).runtime)
