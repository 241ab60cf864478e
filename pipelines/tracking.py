"""MLflow tracking for stages: one run per executed stage, nested under a sweep's run if there is one; fail-soft.

The tracking URI is explicit: `MLFLOW_TRACKING_URI` if set, else `sqlite:///<repo>/mlflow.db`
(the repository root is the working directory DVC runs stages in). The experiment is
`MLFLOW_EXPERIMENT_NAME`, else "trilemma".

Tracking never fails a stage: if the store is unusable (a server that is down or answers too
slowly, a local sqlite file that is locked, corrupt or cannot be created), the stage's outputs are
already written, and logging prints one warning line and gives up within seconds instead of
MLflow's default of minutes of retries (about 4 minutes for a refused HTTP connection, about
100 s for a SQL store it cannot open).
"""

from __future__ import annotations

import os
import socket
import sqlite3
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

DEFAULT_EXPERIMENT = "trilemma"
# MLflow's defaults retry a refused connection for ~4 minutes and wait 120 s per request.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
METRIC_BATCH, PARAM_BATCH = 1000, 100  # MLflow's log_batch limits


def tracking_uri(root: str | Path | None = None) -> str:
    """MLFLOW_TRACKING_URI, or a sqlite store at the repository root (`root`, else the working directory)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(root or Path.cwd()).resolve() / 'mlflow.db'}"


def experiment_name() -> str:
    return os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT


@dataclass
class StageRun:
    """What one stage execution reports: params, scalar metrics, step series, tables and files."""

    stage: str
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    series: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # key -> [(step, value)]
    tables: dict[str, Any] = field(default_factory=dict)  # artifact file name -> pandas DataFrame
    artifacts: list[Path] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}, for MLflow params."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out |= flatten(v, f"{key}.")
        else:
            out[key] = v
    return out


DEFAULT_PORTS = {"http": 80, "https": 443, "postgresql": 5432, "mysql": 3306, "mssql": 1433}


def _unusable(uri: str, timeout: float = 2.0) -> str | None:
    """Why the store at `uri` cannot take a run, found within seconds; None if it looks usable.

    A server (HTTP or a database) must accept a TCP connection; a local sqlite store must be a
    database that a writer can lock, or a file that can be created.
    """
    parsed = urlparse(uri)
    scheme = parsed.scheme.split("+")[0]  # postgresql+psycopg2 -> postgresql
    if scheme == "sqlite":
        return _sqlite_problem(uri, timeout)
    port = parsed.port or DEFAULT_PORTS.get(scheme)
    if not parsed.hostname or not port:
        return None
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            return None
    except OSError as e:
        return f"cannot connect to {parsed.hostname}:{port} ({e.strerror or e})"


def _sqlite_problem(uri: str, timeout: float) -> str | None:
    """Why a sqlite store cannot take a run (missing and uncreatable, corrupt, locked by a writer), or None."""
    path = Path(uri.removeprefix("sqlite:///").split("?")[0])
    if not uri.startswith("sqlite:///") or not path.name:  # sqlite:// is in memory
        return None
    if not path.exists():
        ancestor = next(p for p in path.parents if p.exists())
        return None if ancestor.is_dir() and os.access(ancestor, os.W_OK) else f"cannot create {path}"
    try:
        con = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=timeout)
    except sqlite3.Error as e:
        return f"cannot open {path} ({e})"
    try:
        con.execute("SELECT count(*) FROM sqlite_master")  # reads the schema: a file that is no database fails here
        con.execute("BEGIN IMMEDIATE")  # the lock every write takes: another writer holding it fails after `timeout`
        con.rollback()
    except sqlite3.Error as e:
        return f"{path}: {e}"
    finally:
        con.close()
    return None


def _fail_soft(what: str, log: Callable[[str], Any], uri: str | None = None) -> Any:
    """log(uri), or None after one warning line: tracking must never fail a stage or a sweep."""
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    uri = uri or tracking_uri()
    why = _unusable(uri)
    if why is None:
        try:
            return log(uri)
        except Exception as e:
            why = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
    print(f"warning: MLflow tracking at {uri} unavailable, {what} not logged: {why}", file=sys.stderr)
    return None


def log_stage_run(run: StageRun) -> str | None:
    """Log one stage run to MLflow; return its run id, or None after a one-line warning.

    An orchestrator nests it under its run by setting TRILEMMA_PARENT_RUN_ID (never in dvc.yaml's
    cmd, so that stage hashes do not change).
    """
    return _fail_soft(run.stage, lambda uri: _log(uri, run))


def start_parent_run(name: str, tags: dict[str, str], params: dict[str, Any], uri: str) -> str | None:
    """Open a RUNNING run for a whole sweep, under which stage runs nest; its id, or None after a warning."""
    def log(uri: str) -> str:
        client = _client(uri)
        run_id = client.create_run(_experiment_id(client), run_name=name, tags={"mlflow.runName": name, **tags}).info.run_id
        _write(client, run_id, StageRun(name, params=params))
        return run_id
    return _fail_soft(f"sweep run {name}", log, uri)


def log_to_run(run_id: str, run: StageRun, uri: str, status: str | None = None) -> bool:
    """Log `run`'s contents into the existing run `run_id`, and end it with `status` if given; False after a warning.

    Tables and artifacts overwrite their files, so logging the same contents again changes nothing.
    """
    def log(uri: str) -> bool:
        client = _client(uri)
        _write(client, run_id, run)
        if status:
            client.set_terminated(run_id, status=status)
        return True
    return bool(_fail_soft(f"{run.stage} of run {run_id}", log, uri))


def _client(uri: str):
    import mlflow

    mlflow.set_tracking_uri(uri)
    return mlflow.MlflowClient(uri)


def _experiment_id(client) -> str:
    exp = client.get_experiment_by_name(experiment_name())
    return exp.experiment_id if exp else client.create_experiment(experiment_name())


def _log(uri: str, run: StageRun) -> str:
    client = _client(uri)
    tags = {"dvc.stage": run.stage, "mlflow.runName": run.stage, **run.tags}
    parent = os.environ.get("TRILEMMA_PARENT_RUN_ID")  # set by an orchestrator, never in dvc.yaml's cmd
    if parent:
        tags["mlflow.parentRunId"] = parent
    run_id = client.create_run(_experiment_id(client), run_name=run.stage, tags=tags).info.run_id
    _write(client, run_id, run)
    client.set_terminated(run_id)
    return run_id


def _write(client, run_id: str, run: StageRun) -> None:
    """Params, metrics (step 0) and series, tables and artifacts of `run`, in MLflow's batch sizes."""
    from mlflow.entities import Metric, Param

    now = int(time.time() * 1000)
    metrics = [Metric(k, float(v), now, 0) for k, v in run.metrics.items()]
    metrics += [Metric(k, float(v), now, int(s)) for k, pts in run.series.items() for s, v in pts]
    params = [Param(k, str(v)) for k, v in flatten(run.params).items()]
    for i in range(0, len(params), PARAM_BATCH):
        client.log_batch(run_id, params=params[i : i + PARAM_BATCH])
    for i in range(0, len(metrics), METRIC_BATCH):
        client.log_batch(run_id, metrics=metrics[i : i + METRIC_BATCH])
    for name, table in run.tables.items():
        client.log_table(run_id, data=table, artifact_file=name)
    for path in run.artifacts:
        client.log_artifact(run_id, str(path))
