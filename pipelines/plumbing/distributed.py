"""A training stage on several processes: with params runtime.processes N > 1 it runs as N torchrun ranks.

`run_trainer(main, argv, checkpoint)` (`pipelines.plumbing.entry.entry_point` calls it for the stages that train)
takes one of three paths, once, at the stage's start:

- this process is a torchrun rank already (WORLD_SIZE in its environment: a rank `launch` started, or one of a
  user's own `torchrun --nnodes ... -m pipelines.stages.train_ddpm <args>`): `as_rank` joins the process group
  (gloo on the CPU, NCCL on CUDA, the GPU numbered by the rank's local rank), gives the rank its share of the
  CPU's threads, silences the stdout of every rank but 0, runs main(argv) and leaves the group;
- runtime.processes N > 1: `launch` checks that the machine has N devices and starts N ranks of this stage's module
  with torch.distributed's elastic launcher, the machinery of `torchrun --standalone --nproc_per_node N` (one node,
  a c10d rendezvous on a free local port, no restarts); a rank that fails stops the others, and the stage ends in
  one line (`RanksFailed`): a rank's one-line error (bad input, a diverged run: the same on every rank), which the
  rank hands over in its torchelastic error file rather than print, or else which rank died or failed;
- N = 1: main(argv) in this process, with no process group at all: the one-process path.

Inside the ranks, `stage_replicas` tells the stage its place (`components.training.parallel.Replicas`) and
`local_rank` which GPU is its own. The math of data parallelism is in components/training/parallel.py.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from components.training.parallel import Replicas
from pipelines.params import load_params
from pipelines.params.environment import check_processes
from pipelines.plumbing.errors import RanksFailed, first_line

LAUNCHED = "TRILEMMA_TORCHRUN_LAUNCHER"  # set in the ranks `launch` starts: their failures are its to report
LOST_PEER = 3  # a launched rank's exit status when a collective failed because another rank had died
STOP_SIGNAL = signal.SIGTERM  # how the elastic agent stops the other ranks once one has failed
SHUTDOWN_S = 10  # how long they get to end before SIGKILL


@dataclass(frozen=True)
class Rank:
    """This process's place in a torchrun world, from the variables torchrun sets."""

    rank: int
    world: int
    local_rank: int
    local_world: int
    launched: bool  # started by `launch` (not by a user's own torchrun)


def torchrun_rank() -> Rank | None:
    """This process's rank, if torchrun (or `launch`) started it as one; None otherwise."""
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return None
    env = {k: int(os.environ.get(k, default)) for k, default in
           (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0), ("LOCAL_WORLD_SIZE", 1))}
    return Rank(env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["LOCAL_WORLD_SIZE"], LAUNCHED in os.environ)


def stage_replicas() -> Replicas:
    """The training stage's place among its ranks: Replicas(rank, world) in a process group, Replicas() (one process)
    outside one."""
    if dist.is_available() and dist.is_initialized():
        return Replicas(dist.get_rank(), dist.get_world_size())
    return Replicas()


def local_rank() -> int:
    """This rank's number on its machine, which names its GPU (cuda:<local rank>); 0 outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return int(os.environ.get("LOCAL_RANK", "0"))
    return 0


def run_trainer(main: Callable[[list[str]], None], argv: list[str],
                checkpoint: Callable[[list[str]], str | None]) -> None:
    """main(argv) as this torchrun rank, as runtime.processes ranks, or in this process (the module docstring).

    `checkpoint(argv)` is the stage's final checkpoint (its `.partial` is what a failure leaves to resume from), or
    None where this run trains nothing: the stage then runs in this process whatever runtime.processes says.
    """
    rank = torchrun_rank()
    if rank is not None:
        return as_rank(main, argv, rank)
    runtime = load_params().runtime
    if runtime.processes == 1 or checkpoint(argv) is None:
        return main(argv)
    check_processes(runtime)  # more ranks than devices: one line, before any rank starts
    launch(runtime.processes, argv, checkpoint)


def as_rank(main: Callable[[list[str]], None], argv: list[str], rank: Rank) -> None:
    """main(argv) as one rank of the world torchrun set up: in its process group, on its own device."""
    from pipelines.plumbing.runtime import runtime_of  # here: it imports this module for `local_rank`

    device = runtime_of(load_params().runtime, rank.local_rank).device
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
        # the ranks on this machine share its cores: one rank's threads each, so they do not oversubscribe them
        torch.set_num_threads(max(1, torch.get_num_threads() // rank.local_world))
    quiet = open(os.devnull, "w") if rank.rank else None  # rank 0 alone prints; every rank's stderr stays
    with contextlib.redirect_stdout(quiet) if quiet else contextlib.nullcontext():
        main(argv)
    dist.destroy_process_group()


def hand_over(line: str) -> bool:
    """In a rank `launch` started: write this one-line error into the rank's torchelastic error file, for the launcher
    to print once for all ranks (they meet it alike); False where there is no such file."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return False
    Path(path).write_text(json.dumps({"message": line, "timestamp": int(time.time())}))
    return True


def lost_peer(e: BaseException, rank: Rank | None) -> bool:
    """Whether `e` is a launched rank's collective failing because another rank died (that rank's failure is the one
    `launch` reports): a torch.distributed error, or gloo's "Connection reset/closed by peer"."""
    if rank is None or not rank.launched:
        return False
    return isinstance(e, getattr(dist, "DistError", ())) or (isinstance(e, RuntimeError) and "gloo" in str(e))


def launch(processes: int, argv: list[str], checkpoint: Callable[[list[str]], str | None]) -> None:
    """This stage's module as `processes` ranks on this machine, `torchrun --standalone --nproc_per_node N` as a
    library call; RanksFailed (one line) when a rank fails, the others stopped."""
    from torch.distributed.elastic.multiprocessing.api import DefaultLogsSpecs, SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from pipelines.plumbing.entry import Interrupted  # here: entry imports this module

    _quiet_elastic_logs()
    spec = sys.modules["__main__"].__spec__
    command = ["-m", spec.name] if spec is not None else [sys.argv[0]]  # `python -m <stage module>`, as dvc.yaml runs it
    os.environ[LAUNCHED] = str(os.getpid())
    with tempfile.TemporaryDirectory(prefix="torchrun-") as logs:  # the ranks' error files; their output is ours
        config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=processes, run_id=uuid.uuid4().hex,
                              rdzv_backend="c10d", rdzv_endpoint="127.0.0.1:0", max_restarts=0,
                              logs_specs=DefaultLogsSpecs(log_dir=logs), shutdown_timeout=SHUTDOWN_S)
        try:
            elastic_launch(config, sys.executable)(*command, *argv)
        except ChildFailedError as e:
            raise RanksFailed(*_failure(e.failures, processes, argv, checkpoint)) from None
        except SignalException as e:  # SIGINT or SIGTERM to this process: the agent stopped the ranks
            raise Interrupted(e.sigval) from None


def _failure(failures: dict, processes: int, argv: list[str],
             checkpoint: Callable[[list[str]], str | None]) -> tuple[str, int]:
    """(the line to print, the exit status) for the failed ranks {global rank: ProcessFailure}: the one-line error a
    rank handed over (`hand_over`), else the first rank that failed by itself, not one stopped by the agent or by
    the loss of a peer."""
    for rank in sorted(failures):
        said = _handed_over(failures[rank])
        if said is not None:
            return said, 2
    stopped = {-STOP_SIGNAL, 128 + STOP_SIGNAL, LOST_PEER}
    causes = {r: f for r, f in failures.items() if f.exitcode not in stopped} or failures
    rank = min(causes, key=lambda r: (causes[r].timestamp, r))
    code = causes[rank].exitcode
    how = f"died ({causes[rank].signal_name()})" if code < 0 else f"failed (exit status {code})"
    stage = os.environ.get("DVC_STAGE") or Path(sys.argv[0]).stem
    return f"{stage}: rank {rank} of {processes} {how}; the other ranks were stopped; {_kept(argv, checkpoint)}", 1


def _handed_over(failure) -> str | None:
    """The one-line error a failed rank left in its error file (`hand_over`), if it did."""
    if failure.exitcode != 2 or not Path(failure.error_file).is_file():
        return None
    try:
        message = json.loads(Path(failure.error_file).read_text())["message"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return message if isinstance(message, str) else None


def _kept(argv: list[str], checkpoint: Callable[[list[str]], str | None]) -> str:
    """What a rerun resumes from: the resume checkpoint and its step, if there is one."""
    try:
        partial = Path(f"{checkpoint(argv)}.partial")
    except Exception:  # the path could not be told (it could not be before the launch either)
        return "rerun to resume"
    if not partial.is_file():
        return f"no resume checkpoint {partial} yet: rerun to start over"
    try:
        step = torch.load(partial, map_location="cpu", weights_only=True, mmap=True)["step"]
    except Exception as e:
        return f"last checkpoint {partial} kept, but it does not load ({first_line(e)})"
    return f"last checkpoint {partial} (step {step}) kept: rerun to resume"


def _quiet_elastic_logs() -> None:
    """The launcher's own log lines (rendezvous, the agent's warnings when it stops ranks) off: a stage prints its
    failure in one line, and a good run prints no warning."""
    logging.getLogger("torch.distributed").setLevel(logging.CRITICAL + 1)
    for name, logger in logging.Logger.manager.loggerDict.items():
        if name.startswith("torch.distributed.") and isinstance(logger, logging.Logger):
            logger.setLevel(logging.NOTSET)  # inherit the level above, whatever LOGLEVEL set
