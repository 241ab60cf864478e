"""The loop every trainer stage shares: LR schedule, loss history, resume checkpoints, divergence guard, progress bar.

A stage builds its `components.training.state.TrainState` and a `step_fn(lr) -> metrics` (components.training.steps,
components.training.ddgan, components.scoring.evaluator), wraps them in a `TrainRun` with its config and checkpoint path, and
calls `TrainRun.train`: resume from `<checkpoint>.partial` if it matches, then `train_loop`. What is trained
and how stays in the stage. After the loop the stage writes its outputs (`TrainRun.save` for the final
checkpoint), logs them, and only then calls `TrainRun.finish`, which removes the resume checkpoint: a run
killed at any point after the last step resumes there and redoes no training.

On several torchrun ranks (params runtime.processes; pipelines/plumbing/distributed.py) every rank runs the loop on
its share of each batch, in lockstep: each read of the metrics averages them over the ranks in one collective, so
every rank logs, checks and stops alike. Rank 0 (`TrainRun.leader`) alone writes checkpoints and shows progress,
and the stage returns on the other ranks right after `TrainRun.train`, leaving outputs and logs to rank 0. The
config records the number of ranks when there are several, so a `.partial` resumes only with as many.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from components.data.dataset import Dataset
from components.training.parallel import Replicas
from components.training.state import TrainState, checkpoint, checkpoint_keys, restore
from components.training.steps import lr_at
from pipelines.plumbing.atomic import atomic_save_figure, atomic_torch_save, atomic_write_text
from pipelines.plumbing.entry import progress_enabled
from pipelines.plumbing.errors import InputError, NonFiniteError, ParamsError
from pipelines.plumbing.loading import data_config, first_nonfinite, load_checkpoint
from pipelines.params.training import NetworkParams, OptimParams
from pipelines.plots.training import loss_curve_figure


def scratch_config(p: OptimParams, diffusion: dict, ds: Dataset, **extra) -> dict:
    """The config of networks trained from scratch (each network section of params `p`) on `ds`: what the
    checkpoint records and what a `.partial` must match to be resumed. `extra` follows the networks."""
    nets = {f.name: getattr(p, f.name) for f in dataclasses.fields(p) if isinstance(getattr(p, f.name), NetworkParams)}
    return {
        **{key: {"name": net.name, **net.kwargs} for key, net in nets.items()},
        **extra,
        "data_shape": list(ds.x.shape[1:]),
        "diffusion": diffusion,
        "data": data_config(ds),
        "train": {k: v for k, v in dataclasses.asdict(p).items() if k not in nets},
    }


Metrics = dict[str, "torch.Tensor | float"]  # 0-dim device tensors (or floats), as the steps return them


@dataclasses.dataclass
class TrainRun:
    """One trainer stage's run of `state`: what its checkpoints hold and where they go.

    Every checkpoint is `components.training.state.checkpoint(state, config, history, **extra state)`, the
    extra state being each of `extra`'s `state_dict()` (the iDDPM importance sampler's loss history); the
    resume checkpoint is `<path>.partial`. `history` logs step, each of `logged` and lr. Among several ranks
    (`state.replicas`) the config gains `processes`, and only rank 0 writes or removes checkpoints.
    """

    stage: str
    state: TrainState
    config: dict
    path: str | Path  # the final checkpoint
    logged: tuple[str, ...] = ("loss",)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)  # name -> object with (load_)state_dict
    history: dict[str, list] = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.history = {"step": [], **{k: [] for k in self.logged}, "lr": []}
        world = self.state.replicas.world
        if world > 1:  # recorded only then, so a one-process run's checkpoint keeps its bytes
            self.config = {**self.config, "processes": world}

    @property
    def partial(self) -> Path:
        return Path(f"{self.path}.partial")

    @property
    def leader(self) -> bool:
        """Whether this process writes the run's outputs: rank 0, or the one process."""
        return self.state.replicas.leader

    def save(self, path: str | Path) -> None:
        """The run's checkpoint now, written atomically to `path` (by rank 0 alone: every rank holds the same state)."""
        if not self.leader:
            return
        extra = {name: obj.state_dict() for name, obj in self.extra.items()}
        atomic_torch_save(path, checkpoint(self.state, self.config, self.history, **extra))

    def resume(self) -> bool:
        """Restore state, history and extra state from the resume checkpoint if it exists and was made with this
        config; True if restored."""
        if not self.partial.exists():
            return False
        try:
            ckpt = load_checkpoint(self.partial, (*checkpoint_keys(self.state), *self.extra))
        except InputError as e:
            raise InputError(f"{e}; delete it to start {self.stage} afresh") from None
        if ckpt["config"] != self.config:
            print(f"{self.stage}: {self.partial} was made with other params or data; starting afresh")
            return False
        self.history.update(restore(self.state, ckpt))
        for name, obj in self.extra.items():
            obj.load_state_dict(ckpt[name])
        print(f"{self.stage}: resuming from {self.partial} at step {self.state.step}")
        return True

    def train(self, p: OptimParams, step_fn: Callable[[float], Metrics],
              finite: tuple[str, ...] = ("loss",)) -> tuple[float, float]:
        """Resume if possible, then `train_loop` to p.steps; (seconds, steps per second) of this run."""
        world = self.state.replicas.world
        if p.batch_size % world:  # params check this against runtime.processes; a user's own torchrun may differ
            raise ParamsError(f"{self.stage}: batch_size {p.batch_size} does not split into {world} equal shares, "
                              f"one per torchrun rank")
        self.resume()
        return train_loop(self.stage, p, self.state, step_fn, self.history, self.save, self.partial, finite)

    def finish(self) -> None:
        """Remove the resume checkpoint: call once the stage's outputs are written and logged (rank 0's job)."""
        if self.leader:
            self.partial.unlink(missing_ok=True)


def train_loop(stage: str, p: OptimParams, state: TrainState, step_fn: Callable[[float], Metrics],
               history: dict[str, list], save: Callable[[Path], None], partial: Path,
               finite: tuple[str, ...] = ("loss",)) -> tuple[float, float]:
    """Call step_fn(lr) until state.step reaches p.steps; return (seconds, steps per second) of this run.

    The steps' metrics stay on the device: the loop never waits for it between reads, and reads every
    metric of the last `log_every` steps in one copy (`read_metrics`). Every `log_every` steps the mean of
    each metric named in `history` (besides "step" and "lr") over those steps is appended, NaN values left
    out (a metric not computed at every step). Every `checkpoint_every` steps (a multiple of `log_every`,
    so always just after a read), and after the last, `save(partial)` writes the resume checkpoint.

    Divergence guard: the metrics named in `finite` must be finite at every step, and the weights of
    `state.networks()` before every save; otherwise NonFiniteError names the first bad step (found at
    the read, at most `log_every` steps later) and the last good checkpoint, and nothing more is written.

    Among several ranks (`state.replicas`) each read averages the metrics over them, so every rank takes the same
    decisions; the last read, after the last step, also waits for every rank to have taken it. Rank 0 alone shows
    the progress bar.
    """
    keys = [k for k in history if k not in ("step", "lr")]
    window: dict[str, list[float]] = {k: [] for k in keys}
    pending: list[tuple[int, Metrics]] = []  # (step, metrics) not read yet
    start_step, t0 = state.step, time.perf_counter()
    last_good = state.step if state.step > 0 else None  # resumed from `partial` at this step

    def diverged(what: str, step: int) -> NonFiniteError:
        kept = (f"last good checkpoint {partial} (step {last_good})" if last_good is not None
                else f"no checkpoint saved yet (checkpoint_every = {p.checkpoint_every})")
        return NonFiniteError(f"{stage}: {what} at step {step}: training diverged, nothing written; {kept}")

    show = progress_enabled() and state.replicas.leader
    with tqdm(total=p.steps, initial=state.step, disable=not show, desc=stage, unit="step") as bar:
        while state.step < p.steps:
            lr = lr_at(state.step, lr=p.lr, warmup_steps=p.warmup_steps, total_steps=p.steps, schedule=p.lr_schedule)
            metrics = step_fn(lr)
            pending.append((state.step, metrics))  # the step just taken
            bar.update()
            at_log = state.step % p.log_every == 0 or state.step == p.steps
            if not (at_log or state.step % p.checkpoint_every == 0):
                continue
            for step, metrics in read_metrics(pending, state.replicas):
                for k in finite:
                    if not math.isfinite(metrics[k]):
                        raise diverged(f"{k} is {metrics[k]}", step)
                for k in keys:
                    window[k].append(metrics[k])
            pending = []
            if at_log:
                history["step"].append(state.step)
                for k in keys:
                    history[k].append(_window_mean(window[k]))
                    window[k] = []
                history["lr"].append(lr)
                bar.set_postfix(loss=f"{history[keys[0]][-1]:.4f}", lr=f"{lr:.2e}")
            if state.step % p.checkpoint_every == 0 or state.step == p.steps:
                bad = first_nonfinite({name: net.state_dict() for name, net in state.networks().items()})
                if bad:
                    raise diverged(f"non-finite weights in {bad}", state.step)
                save(partial)
                last_good = state.step
    train_s = time.perf_counter() - t0
    return train_s, (state.step - start_step) / max(train_s, 1e-9)


def read_metrics(pending: list[tuple[int, Metrics]],
                 replicas: Replicas = Replicas()) -> list[tuple[int, dict[str, float]]]:
    """The pending steps' metrics as floats, every tensor among them copied to the host in one transfer.

    Exact: a float32 value widened to float64 on the device reads back as the float `.item()` gives. Among several
    `replicas`, each is first the mean over the ranks of their shares' values, NaN ones left out, in one collective.
    """
    tensors = [v.detach().reshape(()).double() for _, m in pending for v in m.values() if isinstance(v, torch.Tensor)]
    values = iter(replicas.mean(torch.stack(tensors)).tolist() if tensors else ())
    return [(step, {k: next(values) if isinstance(v, torch.Tensor) else float(v) for k, v in m.items()})
            for step, m in pending]


def _window_mean(values: list[float]) -> float:
    """The mean of the non-NaN values; NaN if there are none."""
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def write_history(csv_path: str, png_path: str, history: dict[str, list], title: str) -> None:
    """The loss history as a CSV (a DVC plot: step, each metric, lr) and a PNG of the metrics against step."""
    cols = list(history)
    fmt = {"step": "{}", "lr": "{:.6g}"}
    rows = [",".join(fmt.get(c, "{:.6f}").format(history[c][i]) for c in cols) for i in range(len(history["step"]))]
    atomic_write_text(csv_path, ",".join(cols) + "\n" + "\n".join(rows) + "\n")
    series = {c: history[c] for c in cols if c not in ("step", "lr")}
    atomic_save_figure(png_path, loss_curve_figure(history["step"], series, title))
