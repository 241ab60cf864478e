"""The spool: a stage queues its MLflow run in milliseconds and leaves the logging to a background logger.

A stage never imports MLflow (about 2.4 s of imports, paid 50 times a run). `log_stage_run`
queues the run in the repository's spool, `.mlflow-spool/` (a folder per run: `record.json`,
written last, and copies of its files), and starts one background logger
(`python -m pipelines.plumbing.tracking flush --background`, niced; pipelines/plumbing/tracking.py) unless one is running.
A new experiment keeps its artifacts beside a local store (`<repo>/mlruns/`), whichever process creates it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from pipelines.plumbing.tracking_store import classify, experiment_name, shown_uri, tracking_uri, unusable

SPOOL = ".mlflow-spool"  # queued stage runs, under the repository root
RECORD = "record.json"  # a queued run's contents; written last, so a folder without it is still being written
ENTRY = re.compile(r"\d+-(\d+)-.+")  # a spool folder's name: <start ms>-<writer's pid>-<stage>


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


def process_start_ms() -> int:
    """When this process started (its imports included), in ms since the epoch: a stage run's real start."""
    try:
        return int(psutil.Process().create_time() * 1000)
    except Exception:  # no access to the process table: the first call's time
        return _FIRST_CALL_MS


_FIRST_CALL_MS = int(time.time() * 1000)


def spool_dir(root: str | Path | None = None) -> Path:
    return Path(root or Path.cwd()).resolve() / SPOOL


def log_stage_run(run: StageRun, root: str | Path | None = None) -> Path | None:
    """Queue one stage run for MLflow and start the background logger; the queued folder, or None.

    Takes milliseconds: the run's contents go to `<root>/.mlflow-spool/` with its real start (this
    process's) and end (now). An orchestrator nests it under its run by setting
    TRILEMMA_PARENT_RUN_ID (never in dvc.yaml's cmd, so that stage hashes do not change). A store
    that cannot take it now gets one warning line; the run stays queued for the next flush.
    """
    uri = tracking_uri(root)
    try:
        entry = _queue(run, spool_dir(root), uri)
    except Exception as e:  # a full disk, an unwritable checkout: the stage's outputs are written all the same
        print(f"warning: MLflow run of {run.stage} not queued in {SPOOL}/: {classify(e)[1]}", file=sys.stderr)
        return None
    why = unusable(uri)
    if why:
        print(f"warning: MLflow tracking at {shown_uri(uri)} unavailable, {run.stage} not logged yet: {why}; queued in "
              f"{SPOOL}/ for `python -m pipelines.plumbing.tracking flush`", file=sys.stderr)
        return entry
    _start_background_logger(entry.parent.parent)
    return entry


def _queue(run: StageRun, spool: Path, uri: str) -> Path:
    """Write `run` into a new folder of the spool: its files copied (a later stage may overwrite them), the record
    last."""
    end_ms = int(time.time() * 1000)
    start_ms = min(process_start_ms(), end_ms)
    entry = spool / f"{start_ms:015d}-{os.getpid()}-{run.stage.replace('@', '_')}"
    entry.mkdir(parents=True, exist_ok=False)
    try:
        files = []
        for i, path in enumerate(run.artifacts):
            (entry / str(i)).mkdir()
            shutil.copy2(path, entry / str(i) / Path(path).name)
            files.append(f"{i}/{Path(path).name}")
        record = {
            "stage": run.stage, "uri": uri, "experiment": experiment_name(),
            "parent": os.environ.get("TRILEMMA_PARENT_RUN_ID") or None, "start_ms": start_ms, "end_ms": end_ms,
            "params": {k: str(v) for k, v in flatten(run.params).items()},
            "metrics": {k: float(v) for k, v in run.metrics.items()},
            "series": {k: [[int(step), float(v)] for step, v in pts] for k, pts in run.series.items()},
            "tables": {name: json.loads(df.to_json(orient="split", index=False)) for name, df in run.tables.items()},
            "files": files, "tags": run.tags,
        }
        tmp = entry / f".{RECORD}.tmp"
        tmp.write_text(json.dumps(record))
        os.replace(tmp, entry / RECORD)
    except BaseException:  # a full disk midway: an entry without its record can never be logged, so none is left
        shutil.rmtree(entry, ignore_errors=True)
        raise
    return entry


def _start_background_logger(root: Path) -> None:
    """`flush --background` in its own session, niced, output to the spool's log; it exits if another is running."""
    spool = root / SPOOL
    with open(spool / "logger.log", "ab") as log:
        subprocess.Popen([sys.executable, "-m", "pipelines.plumbing.tracking", "flush", "--background", str(root)],
                         cwd=root, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                         env={**os.environ, "PYTHONPATH": _package_root()})


def _package_root() -> str:
    """The folder holding this package, so the logger imports this code wherever it was started from."""
    here = str(Path(__file__).resolve().parents[2])
    return os.pathsep.join([here, *filter(None, [os.environ.get("PYTHONPATH")])])


def queued(root: str | Path | None = None) -> list[Path]:
    """The spool's complete entries, oldest first."""
    spool = spool_dir(root)
    if not spool.is_dir():
        return []
    return sorted(p for p in spool.glob("*") if (p / RECORD).is_file() and not p.name.endswith(".bad"))
