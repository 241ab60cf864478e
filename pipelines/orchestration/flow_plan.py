"""The sweep's plan: dvc.yaml's stage graph read through DVC, each stage with its slots and its state at flow start.

dvc.yaml stays the only declaration of the DAG: the plan is `Repo().index.graph`, upstream first, then dvc.yaml's
order. A stage's `meta: {gpu: N}` / `meta: {cpu: N}` are the slots it holds while it runs (pipelines/orchestration/flow_stages.py);
`dvc status` says which stages are stale when the flow starts, and which come after a stale one.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import networkx as nx
from dvc.exceptions import DvcException
from dvc.repo import Repo

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


def stage_slots(name: str, meta: dict | None, on_gpu_host: bool, processes: int = 1) -> dict[str, int]:
    """Slots a stage holds, from its dvc.yaml `meta`; on a host without a GPU, GPU stages hold a CPU slot too.

    A stage marked `torchrun: true` trains on params `runtime.processes` ranks, one device each: on a GPU host it
    holds that many GPU slots (and is lent that many GPUs); on a CPU host its ranks share the one CPU slot.
    """
    slots = {}
    for kind in RESOURCES:
        n = (meta or {}).get(kind)
        if n is None:
            continue
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise SweepError(f"dvc.yaml: stage {name}: meta.{kind} must be a positive integer, got {n!r}")
        slots[kind] = n
    if (meta or {}).get("torchrun") and on_gpu_host:
        slots["gpu"] = max(slots.get("gpu", 0), processes)
    if "gpu" in slots and not on_gpu_host:
        slots["cpu"] = max(slots.get("cpu", 0), 1)
    return slots


@contextmanager
def dvc_repo(root: Path):
    """DVC's Repo at `root`, with the working directory there: DVC addresses stages relative to it."""
    before = os.getcwd()
    os.chdir(root)
    try:
        with Repo(str(root)) as repo:
            yield repo
    finally:
        os.chdir(before)


def read_plan(root: Path, targets: list[str] | None, on_gpu_host: bool, processes: int = 1) -> list[Stage]:
    """The stages to run (all, or `targets` and their upstream), upstream first, with their state at flow start;
    `processes`: params runtime.processes, the ranks of a `torchrun` stage."""
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
            slots = stage_slots(s.addressing, s.meta, on_gpu_host, processes)
            stages.append(Stage(s.addressing, len(stages), upstream, slots,
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
