"""Prefect flow `diffusion`: dvc.yaml's DAG run as Prefect tasks, with device slots and one MLflow run per sweep.

    python -m pipelines.flow serve [--background]     # serve deployment diffusion/full-sweep from this checkout
    prefect deployment run diffusion/full-sweep --watch

dvc.yaml stays the only declaration of the DAG. The flow reads the stage graph through DVC's Python API
(`Repo().index.graph`) and runs each stage with `dvc --wait-for-lock repro --single-item <stage>`, so DVC
decides what is stale and hashes, commits and caches exactly as under `dvc repro`. The flow adds scheduling:

- Independent stages run at the same time. A stage's task is submitted once its upstream stages have run and
  its slots are held (`Dispatch`), so Prefect's timeline shows a stage running only while it runs.
- A stage with `meta: {gpu: N}` holds N slots of the global concurrency limit `gpu-slots-<host>` while it
  runs (`strict=True`, so a missing limit is an error, not a silent no-op). The flow sets the limit to
  `gpu_slots` when it starts: by default, one per visible GPU, or 1 on a host without one. Each such stage
  gets its own GPUs through CUDA_VISIBLE_DEVICES.
- The wall-time columns of the trilemma table are measured inside the sampling stages, so stages that
  compute on the CPU must not share it unasked: `meta: {cpu: N}` takes slots of `cpu-slots-<host>`
  (`cpu_slots`, default 1), and on a host without a GPU the GPU stages compute on the CPU and hold a CPU
  slot too. With the defaults, a CPU-only host runs the timed stages one at a time, as `dvc repro` does.
- Stages that `dvc status` finds up to date when the flow starts, and that are not downstream of a stale
  one, are reported and skipped: no task, no slot. A stage downstream of a stale one is checked again
  (`dvc status`) once its upstream stages have run, before it takes a slot.
- A failed stage is retried `retries` times; its output streams into Prefect's logs as it runs, and the
  flow fails with its last error line. A rerun resumes from DVC's state and redoes no finished stage.
- The sweep is one MLflow run; each stage's run nests under it through TRILEMMA_PARENT_RUN_ID in the
  stage's environment (never in dvc.yaml's cmd, so stage hashes do not change). Final tasks log the
  table and plots from the table stage's outputs, and the papers' claims from the claims stage's, even when
  every stage was skipped. MLflow being down costs a warning, never the sweep.
- At the end `dvc status` must be clean; the table and the claims become markdown artifacts of the flow run,
  and the flow returns the trilemma table's path.
- `share_cache`: hosts sharing the default DVC remote restore each other's stages from its run-cache
  (`dvc repro --pull`, then `dvc push --run-cache`).
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future
from contextlib import contextmanager, nullcontext
from contextvars import copy_context
from dataclasses import dataclass
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.concurrency.sync import concurrency
from prefect.futures import PrefectFuture
from prefect.runtime import flow_run, task_run
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.utilities.annotations import quote

from pipelines.params import load_params
from pipelines.params.loader import PARAMS_FILE
from pipelines.tracking import StageRun, flush, log_to_run, shown_uri, start_parent_run, tracking_uri

DEPLOYMENT = "full-sweep"
TABLE_STAGE = "table"  # the stage whose outputs are the trilemma table, logged to the sweep's run
CLAIMS_STAGE = "claims"  # the stage that checks the papers' claims against the table, logged there too
LOGGED = (TABLE_STAGE, CLAIMS_STAGE)  # stages whose outputs the sweep's run and the flow run's artifacts show
RESOURCES = ("gpu", "cpu")  # stage meta keys that take slots of a host-wide concurrency limit


class SweepError(RuntimeError):
    """The sweep cannot start (bad targets or stage meta) or did not finish (a stage failed, status not clean)."""


@dataclass(frozen=True)
class Stage:
    """One dvc.yaml stage as the flow schedules it."""

    name: str                     # DVC's address, e.g. `train_ddgan@4`
    rank: int                     # place in the plan (upstream first, then dvc.yaml's order): who gets a free slot
    upstream: tuple[str, ...]     # stages whose outputs it reads
    slots: dict[str, int]         # limit kind -> slots held while it runs, e.g. {"gpu": 1}
    stale: bool                   # `dvc status` reports it when the flow starts
    after_stale: bool             # downstream of a stale stage: up to date only once its upstream have run
    table: dict[str, list[Path]]  # a LOGGED stage's outputs by kind (see output_files); {} for the others


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


def visible_gpus() -> list[str]:
    """GPU ids a stage may be given: CUDA_VISIBLE_DEVICES if set, else what `nvidia-smi -L` lists, else none."""
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        ids = [d.strip() for d in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if d.strip()]
        return [] if ids[:1] == ["-1"] else ids
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


def limit_names() -> dict[str, str]:
    """Host-wide limits: flow runs on one host share its devices, other hosts have their own."""
    host = re.sub(r"[^a-z0-9-]+", "-", socket.gethostname().lower()).strip("-") or "host"
    return {kind: f"{kind}-slots-{host}" for kind in RESOURCES}


def stage_slots(name: str, meta: dict | None, on_gpu_host: bool) -> dict[str, int]:
    """Slots a stage holds, from its dvc.yaml `meta`; on a host without a GPU, GPU stages hold a CPU slot too."""
    slots = {}
    for kind in RESOURCES:
        n = (meta or {}).get(kind)
        if n is None:
            continue
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise SweepError(f"dvc.yaml: stage {name}: meta.{kind} must be a positive integer, got {n!r}")
        slots[kind] = n
    if "gpu" in slots and not on_gpu_host:
        slots["cpu"] = max(slots.get("cpu", 0), 1)
    return slots


@contextmanager
def dvc_repo(root: Path):
    """DVC's Repo at `root`, with the working directory there: DVC addresses stages relative to it."""
    from dvc.repo import Repo

    before = os.getcwd()
    os.chdir(root)
    try:
        with Repo(str(root)) as repo:
            yield repo
    finally:
        os.chdir(before)


def read_plan(root: Path, targets: list[str] | None, on_gpu_host: bool) -> list[Stage]:
    """The stages to run (all, or `targets` and their upstream), upstream first, with their state at flow start."""
    import networkx as nx
    from dvc.exceptions import DvcException

    with dvc_repo(root) as repo:
        graph = repo.index.graph  # edges run from a stage to the stages it depends on
        by_name = {s.addressing: s for s in graph.nodes}
        if targets:
            unknown = [t for t in targets if t not in by_name]
            if unknown:
                raise SweepError(f"targets: no stage {unknown[0]!r} in dvc.yaml (stages: {', '.join(by_name)})")
            keep = set().union(*({by_name[t], *nx.descendants(graph, by_name[t])} for t in targets))
            graph = graph.subgraph(keep).copy()
        try:
            stale = set(repo.status(targets=targets, with_deps=True))
        except DvcException as e:
            raise SweepError(f"dvc status: {e}") from e
        order = {s: i for i, s in enumerate(by_name)}
        # a guard stage's outputs never change (meta guard, e.g. the params validation stamp): rerunning it makes
        # no stage after it stale; the flow validates params itself before any stage starts
        guards = {s.addressing for s in graph.nodes if (getattr(s, "meta", None) or {}).get("guard")}
        stages, after_stale = [], set()
        for s in nx.lexicographical_topological_sort(graph.reverse(copy=False), key=lambda s: order[s.addressing]):
            if not getattr(s, "cmd", None):  # a .dvc data source, not a stage that computes
                continue
            upstream = tuple(u.addressing for u in graph.successors(s) if getattr(u, "cmd", None))
            if any((u in stale or u in after_stale) and u not in guards for u in upstream):
                after_stale.add(s.addressing)
            stages.append(Stage(s.addressing, len(stages), upstream, stage_slots(s.addressing, s.meta, on_gpu_host),
                                s.addressing in stale, s.addressing in after_stale,
                                output_files(s.outs) if s.addressing in LOGGED else {}))
    return stages


SUFFIXES = {".json": "json", ".csv": "tables", ".png": "figures", ".svg": "figures", ".md": "text", ".txt": "text"}


def output_files(outs) -> dict[str, list[Path]]:
    """A stage's output files by kind, from their suffix: json, csv tables, figures, text.

    By suffix, not by dvc.yaml's metric/plot/out flags: those say how `dvc metrics show` and `dvc plots` present a
    file (trilemma.json left the metrics for being unreadable there), not what the file holds. A directory
    output (the claims' one file per claim) is none of these.
    """
    kinds: dict[str, list[Path]] = {kind: [] for kind in dict.fromkeys(SUFFIXES.values())}
    for out in outs:
        path = Path(out.fs_path)
        if path.suffix in SUFFIXES:
            kinds[SUFFIXES[path.suffix]].append(path)
    return kinds


def status_clean(root: Path, targets: list[str] | None) -> dict:
    """`dvc status` of the swept stages: {} when every output matches dvc.lock."""
    with dvc_repo(root) as repo:
        return repo.status(targets=targets, with_deps=True)


def _dvc(*args: str) -> list[str]:
    return [sys.executable, "-m", "dvc", *args]


# DVC's hints after a commit, not news to a scheduler
HINTS = ("To track the changes with git", "git add dvc.lock", "To enable auto staging", "dvc config core.autostage",
         "Use `dvc push`")


# what `dvc repro --single-item` prints when it runs a stage, or restores its outputs from the run-cache
RAN = {"Running stage '": "ran", "is cached - skipping run": "restored"}


def _stream(cmd: list[str], cwd: str, env: dict[str, str], logger) -> tuple[int, list[str], str]:
    """Run cmd, sending each output line to Prefect's log as it comes; exit code, last lines, and what DVC did."""
    tail: deque[str] = deque(maxlen=40)
    did = "up to date"
    with subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          bufsize=1) as proc:
        for line in proc.stdout:
            line = line.rstrip()
            if not line or line.strip().startswith(HINTS):
                continue
            tail.append(line)
            if did == "up to date":
                did = next((v for k, v in RAN.items() if k in line), did)
            level = logger.warning if line.lower().startswith("warning") else \
                logger.error if line.lower().startswith(("error", "traceback")) else logger.info
            level(line)
    return proc.returncode, list(tail), did


def stage_error(lines: list[str]) -> str:
    """The stage's own last error line, not DVC's summary of it."""
    own = [line for line in lines if not line.startswith("ERROR: failed to reproduce")]
    return (own or lines or ["no output"])[-1]


@dataclass(frozen=True)
class Grant:
    """What a stage's gate hands its task: the GPU ids lent to it, and how long it waited for its slots."""

    gpus: tuple[str, ...] = ()
    slot_wait_s: float = 0.0  # from its upstream stages having run to holding all its slots
    lease_s: float = 0.0      # the part of it spent on the host's global limits, past this flow run's queue


@task(name="stage", cache_policy=NO_CACHE, retry_delay_seconds=1)
def run_stage(stage: Stage, sweep: Sweep, grant: Grant) -> dict:
    """`dvc repro --single-item` one stage, whose slots its gate holds until this task run ends; a report row."""
    logger = get_run_logger()
    env = {**sweep.env, "CUDA_VISIBLE_DEVICES": ",".join(grant.gpus)} if grant.gpus else sweep.env
    started = time.time()
    repro = ["--wait-for-lock", "repro", "--single-item", *(["--pull"] if sweep.pull else []), stage.name]
    code, lines, status = _stream(_dvc(*repro), sweep.root, env, logger)
    ended = time.time()
    if code != 0:
        raise SweepError(f"stage {stage.name} failed: {stage_error(lines)} (dvc repro exited {code})")
    return {"stage": stage.name, "attempts": task_run.get_run_count(), "status": status,
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
                reply: Future = Future()
                self.requests.put((s, Grant(tuple(gpus), round(held - t0, 3), round(held - queued, 3)), reply))
                fut = reply.result()
                fut.wait()
                return fut.state.is_completed()
        finally:
            self.sweep.slots.give(s.slots, gpus)

    def _up_to_date(self, s: Stage) -> bool:
        return subprocess.run(_dvc("--wait-for-lock", "status", "--quiet", s.name), cwd=self.sweep.root,
                              env=self.sweep.env, capture_output=True).returncode == 0


@task(name="log-table", cache_policy=NO_CACHE)
def log_table(files: dict[str, list[Path]], parent: str | None, uri: str, report: list[dict]) -> str | None:
    """Log the sweep's report and the trilemma table (metrics, csv, markdown, figures) to the sweep's MLflow run.

    Reads the files DVC tracks (`files`, from the plan), so it works the same whether the stages ran now or
    were up to date. Returns the table's path (the markdown output), or None where the evaluation stage was
    not swept.
    """
    import json

    import pandas as pd

    metrics = {}
    for path in files.get("json", []):  # metrics/trilemma.json: {cell: {column: value}}
        for cell, values in json.loads(path.read_text()).items():
            if isinstance(values, dict):
                metrics |= {f"{cell}.{k}": v for k, v in values.items() if isinstance(v, (int, float))}
    tables = {"stages.json": pd.DataFrame(report)}
    tables |= {f"{p.stem}.json": pd.read_csv(p) for p in files.get("tables", [])}
    artifacts = files.get("text", []) + files.get("figures", [])
    if parent:
        log_to_run(parent, StageRun("trilemma table", metrics=metrics, tables=tables, artifacts=artifacts), uri)
    return str(files["text"][0]) if files.get("text") else None


@task(name="log-claims", cache_policy=NO_CACHE)
def log_claims(files: dict[str, list[Path]], parent: str | None, uri: str) -> dict | None:
    """Log the papers' claims to the sweep's MLflow run as the claims stage logs its own (counts, a `claim.<id>`
    tag per claim, claims.md and claims.json); the counts, or None where claims.json is missing."""
    import json

    from pipelines.claims import stage_run

    path = next((p for p in files.get("json", []) if p.is_file()), None)
    if path is None:
        return None
    record = json.loads(path.read_text())
    if parent:
        log_to_run(parent, stage_run("paper claims", record, files.get("text", []) + [path]), uri)
    return record["summary"]


def publish(files: dict[str, dict[str, list[Path]]], claims: dict | None, parent: str | None) -> list[str]:
    """The trilemma table and the claims as markdown artifacts of the flow run; their keys.

    Prefect's UI shows them on the flow run's Artifacts tab, and keeps every sweep's version under the same key
    (Artifacts page), so the result of a deployment run is one click from it, without MLflow.
    """
    from prefect.artifacts import create_markdown_artifact

    run = f"; MLflow run `{parent}`" if parent else ""
    made = []
    for stage, key, description in (
            (TABLE_STAGE, "trilemma-table", f"The trilemma table (DVC stage `{TABLE_STAGE}`){run}"),
            (CLAIMS_STAGE, "paper-claims",
             f"The papers' claims checked against the table (DVC stage `{CLAIMS_STAGE}`): "
             + (f"{claims['holds']} of {claims['total']} hold, {claims['fails']} fail, "
                f"{claims['not measured']} not measured" if claims else "counts unknown") + run)):
        text = next((p for p in files.get(stage, {}).get("text", []) if p.suffix == ".md" and p.is_file()), None)
        if text:
            create_markdown_artifact(text.read_text(), key=key, description=f"{description} ({text.name})")
            made.append(key)
    return made


def default_remote(root: Path) -> str:
    """The repository's default DVC remote, which `share_cache` pulls from and pushes to."""
    proc = subprocess.run(_dvc("remote", "default"), cwd=root, capture_output=True, text=True)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise SweepError("share_cache: the repository has no default DVC remote; add one with "
                         "`dvc remote add -d <name> <url>`")
    return proc.stdout.strip()


def push_cache(root: Path, logger) -> None:
    """`dvc push --run-cache`: the sweep's outputs and stage runs, for other hosts to restore."""
    proc = subprocess.run(_dvc("--wait-for-lock", "push", "--run-cache"), cwd=root, capture_output=True, text=True)
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    if proc.returncode != 0:
        raise SweepError(f"dvc push --run-cache: {stage_error(lines)}")
    logger.info(f"dvc push --run-cache: {lines[-1] if lines else 'nothing to push'}")


def open_limits(capacity: dict[str, int]) -> dict[str, str]:
    """Create or resize this host's global concurrency limits; their names by kind."""
    from prefect import get_client

    limits = limit_names()
    with get_client(sync_client=True) as client:
        for kind, name in limits.items():
            client.upsert_global_concurrency_limit_by_name(name, capacity[kind])
    return limits


def stage_environment(uri: str, parent: str | None) -> dict[str, str]:
    """The stages' environment: this Python's bin first on PATH, the sweep's tracking URI and parent run."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "MLFLOW_TRACKING_URI": uri, "PYTHONUNBUFFERED": "1"}
    env.pop("TRILEMMA_PARENT_RUN_ID", None)
    return env | ({"TRILEMMA_PARENT_RUN_ID": parent} if parent else {})


def collect(dispatch: Dispatch, skipped: list[str]) -> tuple[list[dict], list[str]]:
    """The report, one row per stage, and the failed stages' errors."""
    report = [{"stage": name, "status": "up to date", "attempts": 0} for name in skipped]
    for s in dispatch.todo:
        fut = dispatch.futures.get(s.name)
        if fut is None:
            report.append(dispatch.rows[s.name])
        elif fut.state.is_completed():
            report.append(fut.result())
        else:  # failed after its retries, or crashed
            error = str(fut.result(raise_on_failure=False))
            report.append({"stage": s.name, "status": "failed", "attempts": dispatch.retries + 1, "error": error})
    return report, [r["error"] for r in report if r["status"] == "failed"]


@flow(name="diffusion", task_runner=ThreadPoolTaskRunner(), validate_parameters=True)
def diffusion(gpu_slots: int | None = None, cpu_slots: int = 1, retries: int = 1, targets: list[str] | None = None,
              share_cache: bool = False, repo: str = ".") -> str | None:
    """Run dvc.yaml's stages (all, or `targets` and their upstream) as Prefect tasks; the trilemma table's path.

    gpu_slots: stages with `meta: {gpu: N}` that may run at once (default: visible GPUs, or 1 without one).
    cpu_slots: the same for `meta: {cpu: N}`, and for GPU stages on a host without a GPU.
    retries: times a failed stage is run again before the flow fails.
    targets: stages to run with their upstream, like `dvc repro <targets>`; default all.
    share_cache: stages run with `dvc repro --pull` against the default DVC remote, and a clean sweep ends
        with `dvc push --run-cache`: hosts sharing the remote restore a stage another host ran, not rerun it.
    repo: the repository (default: the working directory).
    """
    logger = get_run_logger()
    root = Path(repo).resolve()
    if not (root / "dvc.yaml").is_file():
        raise SweepError(f"repo: no dvc.yaml in {root}")
    for name, value, least in (("gpu_slots", gpu_slots, 1), ("cpu_slots", cpu_slots, 1), ("retries", retries, 0)):
        if value is not None and value < least:
            raise SweepError(f"{name}: must be at least {least}, got {value}")
    load_params(root / PARAMS_FILE)  # a bad params.yaml fails here, in one line, before any stage starts
    if share_cache:
        logger.info(f"share_cache: DVC remote {default_remote(root)!r}")
    gpus = visible_gpus()
    capacity = {"gpu": gpu_slots or len(gpus) or 1, "cpu": cpu_slots}
    plan = read_plan(root, targets, on_gpu_host=bool(gpus))
    for s in plan:
        for kind, n in s.slots.items():
            if n > capacity[kind]:
                raise SweepError(f"dvc.yaml: stage {s.name} needs {n} {kind} slots, "
                                 f"but {kind}_slots is {capacity[kind]}")
    limits = open_limits(capacity)
    logger.info(f"slots: {', '.join(f'{limits[k]} = {capacity[k]}' for k in RESOURCES)}; GPUs: {gpus or 'none'}")

    uri = tracking_uri(root)
    parent = start_parent_run(
        f"{DEPLOYMENT} {flow_run.get_name() or ''}".strip(),
        {"prefect.flow_run_id": str(flow_run.get_id() or ""), "host": socket.gethostname()},
        {"gpu_slots": capacity["gpu"], "cpu_slots": capacity["cpu"], "retries": retries,
         "targets": ",".join(targets or []) or "all", "share_cache": share_cache}, uri)
    if parent is None:
        logger.warning(f"MLflow at {shown_uri(uri)} unreachable: the sweep runs untracked")
    sweep = Sweep(str(root), stage_environment(uri, parent), limits, Slots(capacity, gpus), pull=share_cache)

    todo = [s for s in plan if s.stale or s.after_stale]
    skipped = [s.name for s in plan if s not in todo]
    logger.info(f"{len(skipped)} of {len(plan)} stages up to date, skipped: {', '.join(skipped) or 'none'}")
    dispatch = Dispatch(todo, sweep, retries)
    dispatch.run()
    report, failures = collect(dispatch, skipped)
    ran = [r["stage"] for r in report if r["status"] in ("ran", "restored")]
    logger.info(f"ran or restored {len(ran)} stages: {', '.join(ran) or 'none'}")

    flush(root)  # the stage runs the background logger has not written yet, before the sweep's run closes
    files = {} if failures else {s.name: s.table for s in plan if s.name in LOGGED}  # stage -> its outputs by kind
    table = log_table(files.get(TABLE_STAGE, {}), parent, uri, report)
    claims = log_claims(files[CLAIMS_STAGE], parent, uri) if CLAIMS_STAGE in files else None
    dirty = {} if failures else status_clean(root, targets)
    if parent:
        log_to_run(parent, StageRun("sweep status"), uri, status="FAILED" if failures or dirty else "FINISHED")
    if failures:
        raise SweepError(failures[0] if len(failures) == 1 else f"{len(failures)} stages failed; first: {failures[0]}")
    if dirty:
        raise SweepError(f"dvc status is not clean after the sweep: {dirty}")
    published = publish(files, claims, parent)
    logger.info(f"Prefect artifacts: {', '.join(published) or 'none (no table or claims stage swept)'}")
    if share_cache:
        push_cache(root, logger)
    logger.info(f"trilemma table: {table}")
    return table


def server_problem(url: str | None, timeout: float = 3.0) -> str | None:
    """None if the Prefect API at `url` answers its health check within `timeout` seconds, else why not."""
    import httpx

    if not url:
        return ("PREFECT_API_URL is not set; start a server (prefect server start) and point at it: "
                "prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api")
    try:
        httpx.get(f"{url.rstrip('/')}/health", timeout=timeout).raise_for_status()
    except httpx.HTTPError as e:
        return f"Prefect server at {url} is unreachable ({type(e).__name__}: {e}); start it with `prefect server start`"
    return None


def wait_for_server(url: str | None, wait: float) -> str | None:
    """None once the Prefect API at `url` answers, within `wait` seconds (a server started a moment ago takes about
    10 s); else why not. Says once that it waits."""
    deadline, said = time.time() + wait, False
    while (why := server_problem(url)) and url and time.time() < deadline:
        if not said:
            print(f"waiting up to {wait:.0f} s for the Prefect server at {url} ...", flush=True)
            said = True
        time.sleep(1)
    return why


SERVE_LOG, SERVE_PID = ".flow-serve.log", ".flow-serve.pid"  # `serve --background`'s, at the repository root


def _serving(pid_file: Path) -> int | None:
    """The pid of a `serve --background` process of this checkout that is still running, or None."""
    import psutil

    try:
        pid = int(pid_file.read_text())
        return pid if "pipelines.flow" in " ".join(psutil.Process(pid).cmdline()) else None
    except (OSError, ValueError, psutil.Error):
        return None


def _last_polled(url: str) -> str | None:
    """When a runner last asked the server for deployment diffusion/full-sweep's scheduled runs (the server's
    clock), or None if the deployment is not registered, was never polled, or the server did not answer."""
    import httpx

    try:
        r = httpx.get(f"{url.rstrip('/')}/deployments/name/diffusion/{DEPLOYMENT}", timeout=3)
    except httpx.HTTPError:
        return None
    return r.json().get("last_polled") if r.status_code == 200 else None


def serve_in_background(root: Path, url: str, timeout: float = 120) -> int:
    """`serve` in a session of its own (it outlives the shell), returning once that process polls the server for the
    deployment's runs, so that a `prefect deployment run` right after it is picked up. Registration alone is not the
    sign: a deployment served before (from another checkout, or a serve that has stopped) is registered already."""
    pid_file, log_path = root / SERVE_PID, root / SERVE_LOG
    if pid := _serving(pid_file):
        print(f"already serving diffusion/{DEPLOYMENT} from {root} (pid {pid}; log {log_path})")
        return 0
    before = _last_polled(url)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "pipelines.flow", "serve", "--wait", "0"], cwd=root,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    pid_file.write_text(f"{proc.pid}\n")
    deadline = time.time() + timeout
    while proc.poll() is None and time.time() < deadline:
        if _last_polled(url) not in (None, before):
            print(f"serving diffusion/{DEPLOYMENT} from {root} (pid {proc.pid}; log {log_path}; stop it with "
                  f"`kill {proc.pid}`)")
            return 0
        time.sleep(0.5)
    tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
    print(f"error: the serving process {'exited' if proc.poll() is not None else 'did not poll for the deployment'}"
          f" within {timeout:.0f} s ({tail[0][:200]}); its log: {log_path}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    import argparse

    from prefect.settings import get_current_settings

    parser = argparse.ArgumentParser(prog="python -m pipelines.flow", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help=f"serve deployment diffusion/{DEPLOYMENT} from this checkout (one machine, "
                                         "no worker)")
    serve.add_argument("--background", action="store_true",
                       help=f"in a process of its own, returning once the deployment is registered (log {SERVE_LOG})")
    serve.add_argument("--wait", type=float, default=60, metavar="SECONDS",
                       help="how long to wait for the Prefect server to answer (default 60)")
    args = parser.parse_args(argv)
    url = get_current_settings().api.url
    why = wait_for_server(url, args.wait)
    if why:
        print(f"error: {why}", file=sys.stderr)
        return 2
    root = Path(__file__).resolve().parents[1]
    if args.background:
        return serve_in_background(root, url)
    from prefect.settings import PREFECT_RUNNER_POLL_FREQUENCY, temporary_settings

    os.chdir(root)  # flow runs start here: the repository root
    # Prefect polls for new runs every 10 s by default; a local server answers a poll a second with ease.
    poll = {} if "PREFECT_RUNNER_POLL_FREQUENCY" in os.environ else {PREFECT_RUNNER_POLL_FREQUENCY: 1}
    with temporary_settings(updates=poll):
        diffusion.serve(name=DEPLOYMENT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
