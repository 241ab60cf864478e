"""MLflow tracking for stages: one run per executed stage, nested under a sweep's run if there is one; fail-soft.

The tracking URI is explicit: `MLFLOW_TRACKING_URI` if set, else `sqlite:///<repo>/mlflow.db`
(the repository root is the working directory DVC runs stages in). The experiment is
`MLFLOW_EXPERIMENT_NAME`, else "trilemma". A profile's workspace (pipelines/profile.py) names its own
in `.trilemma-tracking.json`: the repository's store and `trilemma-<profile>`. A new experiment keeps
its artifacts beside a local store (`<repo>/mlruns/`), whichever process creates it.

A stage never imports MLflow (about 1.4 s of imports, paid 50 times a run). `log_stage_run`
queues the run in the repository's spool, `.mlflow-spool/` (a folder per run: `record.json`,
written last, and copies of its files), which takes milliseconds, and starts one background
logger (`python -m pipelines.tracking flush --background`, niced) unless one is running. The
logger writes each queued run with the stage's real start and end, oldest first, and removes
it from the spool once it is in the store. `python -m pipelines.tracking flush` does the same
in the foreground and returns when the spool is empty (`make repro` ends with it; the Prefect
flow calls `flush` before it closes the sweep's run).

Tracking never fails a stage: if the store is unusable (a server that is down or answers too
slowly, a local sqlite file that is locked, corrupt, cannot be written or cannot be created), the
stage prints one warning line within seconds, with the reason, and its run stays queued for the
next flush, instead of MLflow's default of minutes of retries (about 4 minutes for a refused HTTP
connection, about 100 s for a SQL store it cannot open). `flush` says in one line per store what
keeps its runs queued, and the foreground command then exits 1. A spool folder without a record
whose writer has died can never be finished: `flush` removes it with a warning.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse, urlunparse

DEFAULT_EXPERIMENT = "trilemma"
# MLflow's defaults retry a refused connection for ~4 minutes and wait 120 s per request.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
METRIC_BATCH, PARAM_BATCH = 1000, 100  # MLflow's log_batch limits (tags: as params)
# MLflow 3's UI opens an experiment on its GenAI overview (traces, prompts) unless this tag marks it as one of
# classic model runs, which is all this project logs: without it, the runs table is a click away.
KIND_TAG, ML_KIND = "mlflow.experimentKind", "custom_model_development"
SPOOL = ".mlflow-spool"  # queued stage runs, under the repository root
RECORD = "record.json"  # a queued run's contents; written last, so a folder without it is still being written
PROFILE_TRACKING = ".trilemma-tracking.json"  # a profile workspace's store and experiment (pipelines/profile.py)
ENTRY = re.compile(r"\d+-(\d+)-.+")  # a spool folder's name: <start ms>-<writer's pid>-<stage>
PROBE_TABLE = "trilemma_write_probe"  # created and rolled back to check that a sqlite store takes writes
FS_IOC_GETFLAGS, FS_IMMUTABLE_FL = 0x80086601, 0x10  # Linux: a file's attributes (lsattr), and chattr +i's bit

# What a store's failure says, as an errno anywhere in the exception's chain or as words in one of its messages
# (sqlite's, the OS's, a driver's), and what that means: (verb, reason, errnos, words). The first fault that matches
# wins, so a full disk is not reported as the permission error that the same write may also raise.
FAULTS = [
    ("cannot be written", "disk full", {errno.ENOSPC, errno.EDQUOT}, ("database or disk is full", "no space left")),
    ("cannot be written", "read-only file system", {errno.EROFS}, ("read-only file system",)),
    ("cannot be written", "read-only file", set(), ("readonly database", "read-only database")),
    ("cannot be written", "locked by another process", set(), ("database is locked", "database table is locked")),
    ("cannot be written", "operation not permitted", {errno.EPERM}, ("operation not permitted",)),
    ("cannot be written", "permission denied", {errno.EACCES}, ("permission denied",)),
    ("cannot be read", "not a database", set(), ("file is not a database", "database disk image is malformed")),
    ("cannot be reached", "connection refused", {errno.ECONNREFUSED}, ("connection refused",)),
    ("cannot be reached", "network unreachable", {errno.ENETUNREACH, errno.EHOSTUNREACH},
     ("network is unreachable", "no route to host")),
    ("cannot be reached", "unknown host", set(),
     ("name or service not known", "nodename nor servname", "temporary failure in name resolution")),
    ("cannot be reached", "no answer in time", {errno.ETIMEDOUT}, ("timed out", "timeout expired")),
    ("cannot be opened", "unable to open the database file", set(), ("unable to open database file",)),
]


def _profile_setting(key: str) -> str | None:
    """`key` from a profile workspace's tracking file (pipelines/profile.py writes it), if the working directory is
    one."""
    try:
        return json.loads(Path(PROFILE_TRACKING).read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        return None


def tracking_uri(root: str | Path | None = None) -> str:
    """MLFLOW_TRACKING_URI, else a profile workspace's store, else a sqlite store at the repository root (`root`, else
    the working directory)."""
    return (os.environ.get("MLFLOW_TRACKING_URI") or _profile_setting("MLFLOW_TRACKING_URI")
            or f"sqlite:///{Path(root or Path.cwd()).resolve() / 'mlflow.db'}")


def experiment_name() -> str:
    """MLFLOW_EXPERIMENT_NAME, else a profile workspace's (trilemma-<profile>), else "trilemma"."""
    return os.environ.get("MLFLOW_EXPERIMENT_NAME") or _profile_setting("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT


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


def shown_uri(uri: str) -> str:
    """`uri` as it may be printed: a password in it replaced by *** (postgresql://user:***@host/db)."""
    parsed = urlparse(uri)
    if parsed.password is None:
        return uri
    return urlunparse(parsed._replace(netloc=f"{parsed.username}:***@{parsed.netloc.rsplit('@', 1)[1]}"))


DEFAULT_PORTS = {"http": 80, "https": 443, "postgresql": 5432, "mysql": 3306, "mssql": 1433}


def _unusable(uri: str, timeout: float = 2.0) -> str | None:
    """What is wrong with the store at `uri`, found within seconds ("cannot be written (disk full)"); None if it looks
    usable.

    A server (HTTP or a database) must accept a TCP connection; a local sqlite store must be a
    database that takes a write (rolled back), or a file that can be created.
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
        return _problem(e)


def _sqlite_problem(uri: str, timeout: float) -> str | None:
    """What keeps a sqlite store from taking a run (its file or folder not writable, a full disk, a lock held by
    another writer, not a database, missing and uncreatable), or None."""
    path = _sqlite_path(uri)
    if path is None:  # sqlite:// is in memory
        return None
    try:
        if (why := _file_problem(path)) or not path.exists():
            return why
    except OSError as e:  # a path the file system refuses to look at (too long, a folder that cannot be searched)
        return _problem(e)
    try:
        con = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=timeout, isolation_level=None)
    except sqlite3.Error as e:
        return _problem(e)
    try:
        con.execute("SELECT count(*) FROM sqlite_master")  # reads the schema: a file that is no database fails here
        con.execute("BEGIN IMMEDIATE")  # the lock every write takes: another writer holding it fails after `timeout`
        # A write, rolled back: sqlite grants the lock on a file it cannot write, and a full disk fails only once
        # sqlite writes its journal.
        con.execute(f"CREATE TABLE {PROBE_TABLE} (x)")
    except sqlite3.Error as e:
        return _problem(e)
    finally:
        con.close()  # rolls the probe's write back
    return None


def _file_problem(path: Path) -> str | None:
    """What keeps a local sqlite store's file, or the folder where sqlite writes its journal beside it, from being
    written, from the file system alone; None if both look writable."""
    if not path.exists():
        ancestor = next(p for p in path.parents if p.exists())
        if not ancestor.is_dir():
            return f"cannot be created ({ancestor} is not a folder)"
        return _unwritable(ancestor, "folder", "cannot be created")
    return _unwritable(path, "file") or _unwritable(path.parent, "folder")


def _unwritable(path: Path, kind: str, verb: str = "cannot be written") -> str | None:
    """'<verb> (read-only file system | immutable <kind> | read-only <kind>)' if this process cannot write `path`, or
    None. os.access answers for root too: an immutable file or a read-only mount refuses root as well."""
    if os.statvfs(path).f_flag & os.ST_RDONLY:
        return f"{verb} (read-only file system)"
    if os.access(path, os.W_OK):
        return None
    where = "" if kind == "file" else f" {path}"
    return f"{verb} ({'immutable' if _immutable(path) else 'read-only'} {kind}{where})"


def _immutable(path: Path) -> bool:
    """Whether `path` carries the immutable attribute (chattr +i); False where the file system cannot say."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        flags = fcntl.ioctl(fd, FS_IOC_GETFLAGS, bytes(8))
        return bool(int.from_bytes(flags[:4], sys.byteorder) & FS_IMMUTABLE_FL)
    except OSError:  # not Linux, or a file system without attributes
        return False
    finally:
        os.close(fd)


def _chain(e: BaseException) -> list[BaseException]:
    """`e` and the exceptions behind it, outermost first: MLflow and SQLAlchemy wrap the sqlite or OS error."""
    seen: list[BaseException] = []
    todo = [e]
    while todo:
        x = todo.pop(0)
        if x is not None and all(x is not y for y in seen):
            seen.append(x)
            todo += [x.__cause__, x.__context__, getattr(x, "orig", None)]  # orig: SQLAlchemy's driver error
    return seen


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else ""


def _classify(e: BaseException) -> tuple[str, str]:
    """(verb, reason) for an exception a store or the spool raised: ("cannot be written", "disk full"); an unknown
    one gives ("failed", "<its innermost type>: <first line>")."""
    chain = _chain(e)
    for verb, reason, errnos, words in FAULTS:
        for x in chain:
            if getattr(x, "errno", None) in errnos or any(w in _first_line(x).lower() for w in words):
                # the file the OS refused; not for a full disk, where shutil's copy names its source
                filename = getattr(x, "filename", None) if reason != "disk full" else None
                return verb, f"{reason}: {filename}" if filename else reason
    root = chain[-1]
    return "failed", f"{type(root).__name__}: {_first_line(root)[:160]}"


def _problem(e: BaseException) -> str:
    """'<verb> (<reason>)' for an exception a store raised, in one line: "cannot be written (disk full)"."""
    verb, reason = _classify(e)
    return f"{verb} ({reason})"


def _store_problem(uri: str, e: BaseException) -> str:
    """What is wrong with the store at `uri`, which raised `e` inside MLflow: a local file's state says it more
    exactly than sqlite's message ("unable to open database file" for a folder where no journal can be created)."""
    path = _sqlite_path(uri)
    return (path and _file_problem(path)) or _problem(e)


def _attempt(log: Callable[[str], Any], uri: str) -> tuple[Any, str | None]:
    """(log(uri), None), or (None, what is wrong with the store): checked first, within seconds; never raises."""
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    why = _unusable(uri)
    if why:
        return None, why
    try:
        return log(uri), None
    except Exception as e:
        _drop_connections(uri)
        return None, _store_problem(uri, e)


def _drop_connections(uri: str) -> None:
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
    result, why = _attempt(log, uri)
    if why:
        print(f"warning: MLflow tracking at {shown_uri(uri)} unavailable, {what} not logged: {why}", file=sys.stderr)
    return result


def process_start_ms() -> int:
    """When this process started (its imports included), in ms since the epoch: a stage run's real start."""
    try:
        import psutil

        return int(psutil.Process().create_time() * 1000)
    except Exception:  # no psutil, or no access to the process table: the first call's time
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
        print(f"warning: MLflow run of {run.stage} not queued in {SPOOL}/: {_classify(e)[1]}", file=sys.stderr)
        return None
    why = _unusable(uri)
    if why:
        print(f"warning: MLflow tracking at {shown_uri(uri)} unavailable, {run.stage} not logged yet: {why}; queued in "
              f"{SPOOL}/ for `python -m pipelines.tracking flush`", file=sys.stderr)
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
        subprocess.Popen([sys.executable, "-m", "pipelines.tracking", "flush", "--background", str(root)],
                         cwd=root, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                         env={**os.environ, "PYTHONPATH": _package_root()})


def _package_root() -> str:
    """The folder holding this package, so the logger imports this code wherever it was started from."""
    here = str(Path(__file__).resolve().parents[1])
    return os.pathsep.join([here, *filter(None, [os.environ.get("PYTHONPATH")])])


def queued(root: str | Path | None = None) -> list[Path]:
    """The spool's complete entries, oldest first."""
    spool = spool_dir(root)
    if not spool.is_dir():
        return []
    return sorted(p for p in spool.glob("*") if (p / RECORD).is_file() and not p.name.endswith(".bad"))


def flush(root: str | Path | None = None, wait: bool = True) -> list[str]:
    """Log every queued run to its store, oldest first, each removed once logged; the new run ids.

    One logger at a time (a lock in the spool). wait=False (the background logger) returns at once if
    another logger holds the lock; that one takes the new entries too, since it looks again after
    releasing it. A store that cannot take a run leaves it, and its later ones, queued, and gets one
    error line on stderr with the reason; the runs of other stores are logged all the same. Folders
    that dead writers left without a record are removed first, with a warning each.
    """
    return _flush(root, wait)[0]


def _flush(root: str | Path | None, wait: bool) -> tuple[list[str], dict[str, str]]:
    """flush's work: (the new run ids, {uri: what is wrong} for each store that refused a run, each said on stderr)."""
    spool = spool_dir(root)
    spool.mkdir(parents=True, exist_ok=True)
    logged: list[str] = []
    problems: dict[str, str] = {}
    with open(spool / ".lock", "a") as lock:
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                return logged, problems
            try:
                _remove_orphans(spool)
                _drain(spool, logged, problems)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
            if problems or not queued(spool.parent):
                break
    for uri, why in problems.items():
        n = sum(_record_uri(entry) == uri for entry in queued(spool.parent))
        print(f"error: MLflow store {shown_uri(uri)} {why}: {n} run{'s' * (n != 1)} not logged, still queued in "
              f"{spool}", file=sys.stderr)
    return logged, problems


def _drain(spool: Path, logged: list[str], problems: dict[str, str]) -> None:
    """Log the queued entries until none is left that a working store can take; a store that refuses one goes into
    `problems` (its uri: what is wrong), and its later entries wait for the next flush."""
    progress = True
    while progress:  # again, for the entries queued meanwhile
        progress = False
        for entry in queued(spool.parent):
            try:
                record = json.loads((entry / RECORD).read_text())
            except (OSError, ValueError) as e:  # never block the queue behind one unreadable entry
                print(f"warning: {entry}: unreadable queued run ({type(e).__name__}), set aside as {entry.name}.bad",
                      file=sys.stderr)
                entry.rename(entry.with_name(f"{entry.name}.bad"))
                continue
            if record["uri"] in problems:
                continue
            run_id, why = _attempt(lambda uri: _log(uri, record, entry), record["uri"])
            if why:
                problems[record["uri"]] = why
                continue
            logged.append(run_id)
            shutil.rmtree(entry, ignore_errors=True)
            progress = True


def _record_uri(entry: Path) -> str | None:
    """The store a queued entry goes to, or None if its record cannot be read."""
    try:
        return json.loads((entry / RECORD).read_text())["uri"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _remove_orphans(spool: Path) -> list[Path]:
    """Remove the spool's folders that have no record and whose writer is dead (a record will never come: the
    stage was killed, or its disk filled, while it queued its run), one warning line each; the folders removed."""
    removed = []
    for entry in sorted(spool.iterdir()):
        m = ENTRY.fullmatch(entry.name)
        if m is None or entry.name.endswith(".bad") or not entry.is_dir() or (entry / RECORD).exists():
            continue
        if _alive(int(m.group(1))):  # still writing it
            continue
        shutil.rmtree(entry, ignore_errors=True)
        if not entry.exists():  # else (a read-only spool) the next flush tries again
            removed.append(entry)
            print(f"warning: {entry}: half-written MLflow run removed (no {RECORD}; its writer, pid {m.group(1)}, "
                  f"has exited)", file=sys.stderr)
    return removed


def _alive(pid: int) -> bool:
    """Whether process `pid` exists (pipelines.io has the same; importing it would load numpy into the logger)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


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


def _client(uri: str):
    import mlflow

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
    local = _sqlite_path(uri)
    location = (local.parent / "mlruns").as_uri() if local else None
    return client.create_experiment(name, artifact_location=location, tags={KIND_TAG: ML_KIND})


def _sqlite_path(uri: str) -> Path | None:
    """The file of a local sqlite store's URI; None for anything else (a server, in-memory sqlite)."""
    path = uri.removeprefix("sqlite:///").split("?")[0]
    return Path(path) if uri.startswith("sqlite:///") and Path(path).name else None


def _log(uri: str, record: dict, entry: Path) -> str:
    """One queued stage run into the store, with the stage's own start and end."""
    from mlflow.entities import Metric, Param

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
            import pandas as pd

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
    from mlflow.entities import Metric, Param, RunTag

    now = int(time.time() * 1000)
    metrics = [Metric(k, float(v), now, 0) for k, v in run.metrics.items()]
    metrics += [Metric(k, float(v), now, int(s)) for k, pts in run.series.items() for s, v in pts]
    params = [Param(k, str(v)) for k, v in flatten(run.params).items()]
    _log_batches(client, run_id, params, metrics, [RunTag(k, str(v)) for k, v in run.tags.items()])
    for name, table in run.tables.items():
        client.log_table(run_id, data=table, artifact_file=name)
    for path in run.artifacts:
        client.log_artifact(run_id, str(path))


def main(argv: list[str]) -> int:
    """`python -m pipelines.tracking flush [--background] [root]`: log the queued stage runs."""
    args = [a for a in argv if a != "--background"]
    if not args or args[0] != "flush" or len(args) > 2:
        print("usage: python -m pipelines.tracking flush [--background] [repository root]", file=sys.stderr)
        return 2
    root = args[1] if len(args) == 2 else None
    background = "--background" in argv
    if background:
        os.nice(10)  # the next stage, possibly timed, goes first
    try:
        problems = _flush(root, wait=not background)[1]
    except OSError as e:  # the spool itself: its lock or an entry cannot be written
        print(f"error: MLflow spool {spool_dir(root)} {_problem(e)}", file=sys.stderr)
        return 1
    left = len(queued(root))
    if left and not problems and not background:  # queued after flush looked: a stage that ran meanwhile
        print(f"error: {left} MLflow runs still queued in {spool_dir(root)}", file=sys.stderr)
    return 1 if left and not background else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
