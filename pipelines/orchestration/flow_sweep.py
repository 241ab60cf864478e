"""Prefect flow `diffusion`: dvc.yaml's DAG run as Prefect tasks, with device slots and one MLflow run per sweep.

    python -m pipelines.orchestration.flow serve [--background]     # serve deployment diffusion/full-sweep (pipelines/orchestration/flow.py)
    prefect deployment run diffusion/full-sweep --watch

dvc.yaml stays the only declaration of the DAG. The flow reads the stage graph through DVC's Python API
(`Repo().index.graph`, pipelines/orchestration/flow_plan.py) and runs each stage with `dvc --wait-for-lock repro --single-item
<stage>`, so DVC decides what is stale and hashes, commits and caches exactly as under `dvc repro`. The flow adds
scheduling:

- Independent stages run at the same time. A stage's task is submitted once its upstream stages have run and
  its slots are held (`Dispatch`, pipelines/orchestration/flow_stages.py), so Prefect's timeline shows a stage running only
  while it runs.
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
- `spread`: each stage runs on whichever worker of the work pool is free, in its own checkout, the hosts sharing
  the DVC remote and an MLflow server (pipelines/orchestration/flow_pool.py); this checkout restores the sweep at
  the end and closes it as above.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pandas as pd
from prefect import flow, get_client, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from pipelines.stages.claims import stage_run
from pipelines.orchestration.flow_plan import (
    CLAIMS_STAGE, LOGGED, RESOURCES, TABLE_STAGE, Stage, SweepError, limit_names, read_plan, status_clean,
    visible_gpus,
)
from pipelines.orchestration.flow_dvc import default_remote, push_cache, stage_environment
from pipelines.orchestration.flow_pool import (
    STAGE_DEPLOYMENT, STAGE_FLOW, Pool, check_served_artifacts, check_tracking, checkout_fingerprint, gather,
    watch_hosts,
)
from pipelines.orchestration.flow_stages import Dispatch, Slots, Sweep
from pipelines.params import Params, load_params
from pipelines.params.loader import PARAMS_FILE
from pipelines.plumbing.tracking import flush
from pipelines.plumbing.tracking_mlflow import artifact_uri, log_to_run, start_parent_run
from pipelines.plumbing.tracking_spool import StageRun
from pipelines.plumbing.tracking_store import experiment_name, shown_uri, tracking_uri

DEPLOYMENT = "full-sweep"


@task(name="log-table", cache_policy=NO_CACHE)
def log_table(files: dict[str, list[Path]], parent: str | None, uri: str, report: list[dict]) -> str | None:
    """Log the sweep's report and the trilemma table (metrics, csv, markdown, figures) to the sweep's MLflow run.

    Reads the files DVC tracks (`files`, from the plan), so it works the same whether the stages ran now or
    were up to date. Returns the table's path (the markdown output), or None where the evaluation stage was
    not swept.
    """
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


def open_limits(capacity: dict[str, int]) -> dict[str, str]:
    """Create or resize this host's global concurrency limits; their names by kind."""
    limits = limit_names()
    with get_client(sync_client=True) as client:
        for kind, name in limits.items():
            client.upsert_global_concurrency_limit_by_name(name, capacity[kind])
    return limits


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
              share_cache: bool = False, spread: bool = False, host_timeout_s: int = 90,
              repo: str = ".") -> str | None:
    """Run dvc.yaml's stages (all, or `targets` and their upstream) as Prefect tasks; the trilemma table's path.

    gpu_slots: stages with `meta: {gpu: N}` that may run at once (default: visible GPUs, or 1 without one).
    cpu_slots: the same for `meta: {cpu: N}`, and for GPU stages on a host without a GPU.
    retries: times a failed stage is run again before the flow fails.
    targets: stages to run with their upstream, like `dvc repro <targets>`; default all.
    share_cache: stages run with `dvc repro --pull` against the default DVC remote, and a clean sweep ends
        with `dvc push --run-cache`: hosts sharing the remote restore a stage another host ran, not rerun it.
    spread: each stage runs on a worker of the stage deployment's work pool, in that worker's checkout, exchanging
        outputs through the default DVC remote and logging to the MLflow server (pipelines/orchestration/flow_pool.py);
        this checkout restores the whole sweep from the remote at the end. The workers' limits are the slots.
    host_timeout_s: spread: a stage run silent this long (no heartbeat) is marked Crashed, and retried.
    repo: the repository (default: the working directory).
    """
    logger = get_run_logger()
    root = Path(repo).resolve()
    params = _check_arguments(root, gpu_slots, cpu_slots, retries)
    if share_cache or spread:
        logger.info(f"DVC remote {default_remote(root)!r}")
    gpus = visible_gpus()
    capacity = {"gpu": gpu_slots or len(gpus) or 1, "cpu": cpu_slots}
    plan = read_plan(root, targets, on_gpu_host=bool(gpus), processes=params.runtime.processes)
    uri = tracking_uri(root)
    if spread:
        check_tracking(uri)
        watch_hosts(host_timeout_s)
        push_cache(root, logger)  # what is up to date here, for the hosts to restore rather than rerun
        limits = {}
        logger.info(f"spread over work pool deployment {STAGE_FLOW}/{STAGE_DEPLOYMENT}; MLflow {shown_uri(uri)}")
    else:
        _check_capacity(plan, capacity)
        limits = open_limits(capacity)
        logger.info(f"slots: {', '.join(f'{limits[k]} = {capacity[k]}' for k in RESOURCES)}; GPUs: {gpus or 'none'}")

    parent = _start_sweep_run(uri, {"gpu_slots": capacity["gpu"], "cpu_slots": capacity["cpu"], "retries": retries,
                                    "targets": ",".join(targets or []) or "all", "share_cache": share_cache,
                                    "spread": spread}, logger)
    if spread and parent:
        _check_sweep_artifacts(parent, uri)
    pool = Pool(checkout_fingerprint(root), uri, experiment_name(), parent) if spread else None
    sweep = Sweep(str(root), stage_environment(uri, parent), limits, Slots(capacity, gpus), pull=share_cache,
                  pool=pool)

    todo = [s for s in plan if s.stale or s.after_stale]
    skipped = [s.name for s in plan if s not in todo]
    logger.info(f"{len(skipped)} of {len(plan)} stages up to date, skipped: {', '.join(skipped) or 'none'}")
    dispatch = Dispatch(todo, sweep, retries)
    dispatch.run()
    report, failures = collect(dispatch, skipped)
    ran = [r["stage"] for r in report if r["status"] in ("ran", "restored")]
    logger.info(f"ran or restored {len(ran)} stages: {', '.join(ran) or 'none'}")
    if spread and not failures:
        gather(root, targets, sweep.env, logger)

    files, table, claims = _close_sweep(root, plan, targets, report, failures, parent, uri)
    published = publish(files, claims, parent)
    logger.info(f"Prefect artifacts: {', '.join(published) or 'none (no table or claims stage swept)'}")
    if share_cache or spread:
        push_cache(root, logger)
    logger.info(f"trilemma table: {table}")
    return table


def _check_arguments(root: Path, gpu_slots: int | None, cpu_slots: int, retries: int) -> Params:
    """SweepError for a folder without dvc.yaml or a count below its least; a bad params.yaml fails here too, in one
    line: all before any stage starts. The params."""
    if not (root / "dvc.yaml").is_file():
        raise SweepError(f"repo: no dvc.yaml in {root}")
    for name, value, least in (("gpu_slots", gpu_slots, 1), ("cpu_slots", cpu_slots, 1), ("retries", retries, 0)):
        if value is not None and value < least:
            raise SweepError(f"{name}: must be at least {least}, got {value}")
    return load_params(root / PARAMS_FILE)


def _check_capacity(plan: list[Stage], capacity: dict[str, int]) -> None:
    """SweepError for a stage that needs more slots of a kind than the sweep has."""
    for s in plan:
        for kind, n in s.slots.items():
            if n > capacity[kind]:
                raise SweepError(f"dvc.yaml: stage {s.name} needs {n} {kind} slots, "
                                 f"but {kind}_slots is {capacity[kind]}")


def _start_sweep_run(uri: str, params: dict, logger) -> str | None:
    """The sweep's MLflow run, named after the deployment and the flow run, under which the stages' runs nest; None
    (after a warning) where MLflow is unreachable."""
    parent = start_parent_run(
        f"{DEPLOYMENT} {flow_run.get_name() or ''}".strip(),
        {"prefect.flow_run_id": str(flow_run.get_id() or ""), "host": socket.gethostname()}, params, uri)
    if parent is None:
        logger.warning(f"MLflow at {shown_uri(uri)} unreachable: the sweep runs untracked")
    return parent


def _check_sweep_artifacts(parent: str, uri: str) -> None:
    """SweepError, the sweep's run closed FAILED, where the experiment keeps its files in a folder rather than
    through the server (`check_served_artifacts`)."""
    location = artifact_uri(parent, uri)
    try:
        check_served_artifacts(location or "mlflow-artifacts:")
    except SweepError:
        log_to_run(parent, StageRun("sweep status"), uri, status="FAILED")
        raise


def _close_sweep(root: Path, plan: list[Stage], targets: list[str] | None, report: list[dict], failures: list[str],
                 parent: str | None, uri: str) -> tuple[dict, str | None, dict | None]:
    """Log the table and the claims to the sweep's run and close it; SweepError where a stage failed or `dvc status`
    is not clean. Returns the logged stages' outputs by kind, the table's path and the claims' counts."""
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
    return files, table, claims
