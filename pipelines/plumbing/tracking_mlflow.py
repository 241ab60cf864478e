"""The MLflow client calls: a queued stage run into its store, and a sweep's parent run; each fail-soft.

Only the background logger (pipelines/plumbing/tracking.py, once it has a run to log) and the Prefect flow import this
module, and with it MLflow.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import mlflow
import pandas as pd
from mlflow.entities import Metric, Param, RunTag

from pipelines.plumbing.tracking_spool import StageRun, flatten
from pipelines.plumbing.tracking_store import experiment_name, shown_uri, sqlite_path, store_problem, tracking_uri, unusable

# MLflow's defaults retry a refused connection for ~4 minutes and wait 120 s per request.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
METRIC_BATCH, PARAM_BATCH = 1000, 100  # MLflow's log_batch limits (tags: as params)
# MLflow 3's UI opens an experiment on its GenAI overview (traces, prompts) unless this tag marks it as one of
# classic model runs, which is all this project logs: without it, the runs table is a click away.
KIND_TAG, ML_KIND = "mlflow.experimentKind", "custom_model_development"


def attempt(log: Callable[[str], Any], uri: str) -> tuple[Any, str | None]:
    """(log(uri), None), or (None, what is wrong with the store): checked first, within seconds; never raises."""
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    why = unusable(uri)
    if why:
        return None, why
    try:
        return log(uri), None
    except Exception as e:
        drop_connections(uri)
        return None, store_problem(uri, e)


def drop_connections(uri: str) -> None:
    """Close the connections MLflow keeps open to a SQL store that failed. sqlite opens a file it cannot write
    read-only, and a pooled connection would keep failing in this process (a sweep's flow) once the file is fixed."""
    store = sys.modules.get("mlflow.store.tracking.sqlalchemy_store")
    try:
        engine = store.SqlAlchemyStore._engine_map.get(uri) if store else None  # MLflow's engine for each store
        if engine is not None:
            engine.dispose()  # its next connection opens the file afresh
    except Exception:  # another MLflow version's internals: the next process opens the store afresh anyway
        pass


def _fail_soft(what: str, log: Callable[[str], Any], uri: str | None = None) -> Any:
    """log(uri), or None after one warning line: tracking must never fail a stage or a sweep."""
    uri = uri or tracking_uri()
    result, why = attempt(log, uri)
    if why:
        print(f"warning: MLflow tracking at {shown_uri(uri)} unavailable, {what} not logged: {why}", file=sys.stderr)
    return result


def start_parent_run(name: str, tags: dict[str, str], params: dict[str, Any], uri: str) -> str | None:
    """Open a RUNNING run for a whole sweep, under which stage runs nest; its id, or None after a warning."""
    def log(uri: str) -> str:
        client = _client(uri)
        run_id = client.create_run(_experiment_id(client, uri), run_name=name,
                                   tags={"mlflow.runName": name, **tags}).info.run_id
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


def artifact_uri(run_id: str, uri: str) -> str | None:
    """Where run `run_id` keeps its files (mlflow-artifacts:/... when the server takes them), or None after a
    warning."""
    def read(uri: str) -> str:
        return _client(uri).get_run(run_id).info.artifact_uri
    return _fail_soft(f"the artifact location of run {run_id}", read, uri)


def _client(uri: str):
    # MLflow logs a SQL error with its traceback (90 lines) before raising it; the caller says it in one line.
    db_log = logging.getLogger("mlflow.store.db.utils")
    if _below_error not in db_log.filters:
        db_log.addFilter(_below_error)
    mlflow.set_tracking_uri(uri)
    return mlflow.MlflowClient(uri)


def _below_error(record: logging.LogRecord) -> bool:
    """Whether a log record is below ERROR: a logging filter."""
    return record.levelno < logging.ERROR


def _experiment_id(client, uri: str, name: str | None = None) -> str:
    """The experiment's id, created if new: beside a local sqlite store, its artifacts go to `<store's folder>/mlruns`
    (MLflow's default, ./mlruns, would follow the working directory of whichever process created it).

    The experiment is marked as classic machine learning (KIND_TAG), and so is one created before this tag was set
    (a user's own kind stays): the check rides on the lookup every logged run does anyway.
    """
    name = name or experiment_name()
    exp = client.get_experiment_by_name(name)
    if exp:
        if KIND_TAG not in exp.tags:
            client.set_experiment_tag(exp.experiment_id, KIND_TAG, ML_KIND)
        return exp.experiment_id
    local = sqlite_path(uri)
    location = (local.parent / "mlruns").as_uri() if local else None
    return client.create_experiment(name, artifact_location=location, tags={KIND_TAG: ML_KIND})


def log_record(uri: str, record: dict, entry: Path) -> str:
    """One queued stage run into the store, with the stage's own start and end."""
    client = _client(uri)
    tags = {"dvc.stage": record["stage"], "mlflow.runName": record["stage"], **record["tags"]}
    if record["parent"]:
        tags["mlflow.parentRunId"] = record["parent"]
    exp_id = _experiment_id(client, uri, record["experiment"])
    run_id = client.create_run(exp_id, start_time=record["start_ms"], run_name=record["stage"], tags=tags).info.run_id
    end = record["end_ms"]
    metrics = [Metric(k, v, end, 0) for k, v in record["metrics"].items()]
    metrics += [Metric(k, v, end, s) for k, pts in record["series"].items() for s, v in pts]
    try:
        _log_batches(client, run_id, [Param(k, v) for k, v in record["params"].items()], metrics)
        if record["tables"]:
            for name, split in record["tables"].items():
                client.log_table(run_id, data=pd.DataFrame(split["data"], columns=split["columns"]),
                                 artifact_file=name)
        for f in record["files"]:
            client.log_artifact(run_id, str(entry / f))
        client.set_terminated(run_id, end_time=end)
    except Exception:
        # The entry stays queued and the next flush logs it afresh: the half-logged run (RUNNING for ever) goes to
        # MLflow's trash rather than beside its twin, if the store takes that.
        try:
            client.delete_run(run_id)
        except Exception:
            pass
        raise
    return run_id


def _log_batches(client, run_id: str, params: list, metrics: list, tags: list = ()) -> None:
    for i in range(0, len(params), PARAM_BATCH):
        client.log_batch(run_id, params=params[i : i + PARAM_BATCH])
    for i in range(0, len(tags), PARAM_BATCH):
        client.log_batch(run_id, tags=tags[i : i + PARAM_BATCH])
    for i in range(0, len(metrics), METRIC_BATCH):
        client.log_batch(run_id, metrics=metrics[i : i + METRIC_BATCH])


def _write(client, run_id: str, run: StageRun) -> None:
    """Params, metrics (step 0) and series, tags, tables and artifacts of `run`, in MLflow's batch sizes."""
    now = int(time.time() * 1000)
    metrics = [Metric(k, float(v), now, 0) for k, v in run.metrics.items()]
    metrics += [Metric(k, float(v), now, int(s)) for k, pts in run.series.items() for s, v in pts]
    params = [Param(k, str(v)) for k, v in flatten(run.params).items()]
    _log_batches(client, run_id, params, metrics, [RunTag(k, str(v)) for k, v in run.tags.items()])
    for name, table in run.tables.items():
        client.log_table(run_id, data=table, artifact_file=name)
    for path in run.artifacts:
        client.log_artifact(run_id, str(path))
