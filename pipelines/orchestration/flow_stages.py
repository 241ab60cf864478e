"""Running the plan's stages as Prefect tasks: one `dvc repro --single-item` each, only while it holds its slots.

A stage's task is submitted once its upstream stages have run and its slots are held (`Dispatch`), so Prefect's
timeline shows a stage running only while it runs; this flow run's slots (`Slots`) are handed out in plan order,
the host's global concurrency limits (`strict=True`) taken after them. A stage's output streams into Prefect's
logs as it runs. Spread over a work pool (`Sweep.pool`), a stage's task sends it to the pool once its upstream
stages have run: the workers' limits are the slots (pipelines/orchestration/flow_pool.py).
"""

from __future__ import annotations

import queue
import subprocess
import threading
import time
from concurrent.futures import Future
from contextlib import nullcontext
from contextvars import copy_context
from dataclasses import dataclass

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.concurrency.sync import concurrency
from prefect.futures import PrefectFuture
from prefect.runtime import task_run
from prefect.utilities.annotations import quote

from pipelines.orchestration.flow_dvc import dvc_command, stage_error, stream
from pipelines.orchestration.flow_plan import Stage, SweepError
from pipelines.orchestration.flow_pool import Pool, send

@dataclass(frozen=True)
class Sweep:
    """What every stage shares: the repository, the stage environment, the limits and the local slot queue.

    Tasks get it through prefect's `quote`: Prefect hands it over as it is, rather than rebuilding it field by field.
    """

    root: str
    env: dict[str, str]
    limits: dict[str, str]        # kind -> global concurrency limit name
    slots: Slots
    pull: bool = False            # `dvc repro --pull`: restore from the default remote's run-cache
    pool: Pool | None = None      # spread: each stage goes to the work pool (pipelines/orchestration/flow_pool.py)


class Slots:
    """This flow run's share of the host's slots, handed to waiting stages in plan order as soon as they free.

    Stages (their gates, see `Dispatch`) queue here before they take the global limits' slots: Prefect
    answers a full limit with a Retry-After of up to 30 s, which left the devices idle between stages. Past
    this queue the global slots are free unless another flow run on the host holds them. Stages holding GPU
    slots are lent GPU ids, least-loaded first, for CUDA_VISIBLE_DEVICES.
    """

    def __init__(self, capacity: dict[str, int], gpus: list[str]):
        self.free, self.gpus, self.load = dict(capacity), list(gpus), {d: 0 for d in gpus}
        self.waiting: dict[int, dict[str, int]] = {}  # rank in the plan -> slots wanted
        self.cond = threading.Condition()

    def _fits(self, need: dict[str, int]) -> bool:
        return all(self.free[k] >= n for k, n in need.items())

    def take(self, rank: int, need: dict[str, int]) -> list[str]:
        """Block until `need` fits and no earlier stage that fits is waiting; take it, and the GPU ids lent."""
        with self.cond:
            self.waiting[rank] = need
            while not self._fits(need) or any(r < rank and self._fits(n) for r, n in self.waiting.items()):
                self.cond.wait()
            del self.waiting[rank]
            for k, n in need.items():
                self.free[k] -= n
            ids = sorted(self.gpus, key=lambda d: self.load[d])[:need.get("gpu", 0)]
            for d in ids:
                self.load[d] += 1
            self.cond.notify_all()  # later stages may fit in what is left
            return ids

    def give(self, need: dict[str, int], ids: list[str]) -> None:
        with self.cond:
            for k, n in need.items():
                self.free[k] += n
            for d in ids:
                self.load[d] -= 1
            self.cond.notify_all()


@dataclass(frozen=True)
class Grant:
    """What a stage's gate hands its task: the GPU ids lent to it, and how long it waited for its slots."""

    gpus: tuple[str, ...] = ()
    slot_wait_s: float = 0.0  # from its upstream stages having run to holding all its slots
    lease_s: float = 0.0      # the part of it spent on the host's global limits, past this flow run's queue


@task(name="stage", cache_policy=NO_CACHE, retry_delay_seconds=1)
def run_stage(stage: Stage, sweep: Sweep, grant: Grant) -> dict:
    """`dvc repro --single-item` one stage, whose slots its gate holds until this task run ends (or, spread, a run
    of the stage deployment on the work pool: `flow_pool.send`); a report row."""
    if sweep.pool:
        return {**send(stage.name, sweep.pool), "attempts": task_run.get_run_count()}
    logger = get_run_logger()
    env = {**sweep.env, "CUDA_VISIBLE_DEVICES": ",".join(grant.gpus)} if grant.gpus else sweep.env
    started = time.time()
    repro = ["--wait-for-lock", "repro", "--single-item", *(["--pull"] if sweep.pull else []), stage.name]
    code, lines, did = stream(dvc_command(*repro), sweep.root, env, logger)
    ended = time.time()
    if code != 0:
        raise SweepError(f"stage {stage.name} failed: {stage_error(lines)} (dvc repro exited {code})")
    return {"stage": stage.name, "attempts": task_run.get_run_count(), "status": did.get(stage.name, "up to date"),
            "slot_wait_s": grant.slot_wait_s, "lease_s": grant.lease_s, "started": started, "ended": ended,
            "seconds": round(ended - started, 3), "gpus": ",".join(grant.gpus)}


class Dispatch:
    """Submits each stage's task once its upstream stages have run and it holds its slots: a task runs only while
    its stage does.

    Prefect's timeline draws a task run from when it starts Running: tasks that waited for their slots inside
    showed as running all along (a 48-stage sweep drew 48 overlapping bars for stages that ran one at a time).
    So each stage to run gets a gate instead, a thread of the flow run that does the waiting: for its upstream
    stages; for `dvc status` where it is downstream of a stale stage (up to date: no task, no slot); for this flow
    run's slots (`Slots`, in plan order); then for the host's global limits, which only other flow runs hold at
    that point. Holding them, the gate has the flow's thread submit the task (submitting stays where Prefect's
    flow-run context lives, one submission at a time), keeps the slots until the task run is final, retries
    included, and hands them on at once. Tasks are submitted with their upstream tasks as `wait_for`,
    already final, for the dependency arrows of Prefect's graph.
    """

    def __init__(self, todo: list[Stage], sweep: Sweep, retries: int):
        self.todo, self.sweep, self.retries = todo, sweep, retries
        self.futures: dict[str, PrefectFuture] = {}  # the stages that got a task; written by the flow's thread only
        self.rows: dict[str, dict] = {}  # report rows of the stages that got none: up to date, not run, no slots
        self.ok: dict[str, bool] = {}  # stage -> ran or is up to date; set before `ended` is
        self.ended = {s.name: threading.Event() for s in todo}
        self.requests: queue.Queue = queue.Queue()  # (stage, grant, reply) to submit; (None, None, None): a gate ended

    def run(self) -> None:
        """Start a gate per stage and submit what they ask for, until every gate has ended."""
        logger = get_run_logger()
        for s in self.todo:  # each gate in a copy of the flow run's context: it logs to the flow run
            threading.Thread(target=copy_context().run, args=(self._gate, s, logger), name=f"gate {s.name}",
                             daemon=True).start()
        left = len(self.todo)
        while left:
            s, grant, reply = self.requests.get()
            if s is None:
                left -= 1
                continue
            try:
                self.futures[s.name] = run_stage.with_options(task_run_name=s.name, retries=self.retries).submit(
                    s, quote(self.sweep), grant, wait_for=[self.futures[u] for u in s.upstream if u in self.futures])
                reply.set_result(self.futures[s.name])
            except Exception as e:  # the gate reports it and frees the slots
                reply.set_exception(e)

    def _gate(self, s: Stage, logger) -> None:
        ok = False
        try:
            ok = self._wait_and_run(s, logger)
        except Exception as e:  # no task run: the slots or the submission failed
            self.rows[s.name] = {"stage": s.name, "status": "failed", "attempts": 0,
                                 "error": f"stage {s.name}: {type(e).__name__}: {e}"}
        finally:
            self.ok[s.name] = ok
            self.ended[s.name].set()
            self.requests.put((None, None, None))

    def _wait_and_run(self, s: Stage, logger) -> bool:
        """Wait for the stage's turn, then have its task run while holding its slots; whether it ran or is up to
        date."""
        for u in s.upstream:
            if u in self.ended:
                self.ended[u].wait()
        if not all(self.ok.get(u, True) for u in s.upstream):
            self.rows[s.name] = {"stage": s.name, "status": "not run (upstream failed)", "attempts": 0}
            return False
        if self.sweep.pool:  # the pool's workers are the slots; the stage's host restores what is up to date
            return self._submit(s, Grant())
        if s.slots and not s.stale and self._up_to_date(s):  # its upstream reran and came out identical
            logger.info(f"{s.name}: up to date after its upstream stages ran; no slot taken")
            self.rows[s.name] = {"stage": s.name, "status": "up to date", "attempts": 0}
            return True
        names, occupy = [self.sweep.limits[k] for k in s.slots], max(s.slots.values(), default=0)
        t0 = time.time()
        gpus = self.sweep.slots.take(s.rank, s.slots)
        try:
            queued = time.time()
            # released before `give` below: the next stage in this queue finds the global slot free
            with concurrency(names, occupy=occupy, strict=True) if names else nullcontext():
                held = time.time()
                return self._submit(s, Grant(tuple(gpus), round(held - t0, 3), round(held - queued, 3)))
        finally:
            self.sweep.slots.give(s.slots, gpus)

    def _submit(self, s: Stage, grant: Grant) -> bool:
        """Have the flow's thread submit the stage's task, and wait for it to end; whether it completed."""
        reply: Future = Future()
        self.requests.put((s, grant, reply))
        fut = reply.result()
        fut.wait()
        return fut.state.is_completed()

    def _up_to_date(self, s: Stage) -> bool:
        return subprocess.run(dvc_command("--wait-for-lock", "status", "--quiet", s.name), cwd=self.sweep.root,
                              env=self.sweep.env, capture_output=True).returncode == 0
