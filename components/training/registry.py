"""Training's choices by name (the one pattern: components/registry.py): iDDPM's timestep samplers, uniform t or
importance sampling by the loss's second moment (iDDPM §3.3), and the learning-rate schedules."""

from __future__ import annotations

from components.registry import Registry

TIMESTEP_SAMPLERS = Registry("timestep sampler", {
    "uniform": "components.training.steps:UniformTimesteps",
    "loss_second_moment": "components.training.steps:LossSecondMomentTimesteps",
})

LR_SCHEDULES = ("constant", "cosine")  # after linear warm-up
