"""Where tracked runs go, and what keeps a store from taking them, found within seconds and said in one line.

The tracking URI is explicit: `MLFLOW_TRACKING_URI` if set, else `sqlite:///<repo>/mlflow.db`
(the repository root is the working directory DVC runs stages in). The experiment is
`MLFLOW_EXPERIMENT_NAME`, else "trilemma". A profile's workspace (pipelines/orchestration/profile.py) names its own
in `.trilemma-tracking.json`: the repository's store and `trilemma-<profile>`.

Tracking never fails a stage: if the store is unusable (a server that is down or answers too
slowly, a local sqlite file that is locked, corrupt, cannot be written or cannot be created), the
stage prints one warning line within seconds, with the reason, and its run stays queued for the
next flush, instead of MLflow's default of minutes of retries (about 4 minutes for a refused HTTP
connection, about 100 s for a SQL store it cannot open). This module names the reason, without
importing MLflow: from the store's own state (`unusable`) or from what a store raised (`classify`).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sqlite3
import sys
from pathlib import Path
from urllib.parse import urlparse, urlunparse

DEFAULT_EXPERIMENT = "trilemma"
PROFILE_TRACKING = ".trilemma-tracking.json"  # a profile workspace's store and experiment (pipelines/orchestration/profile.py)
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
    """`key` from a profile workspace's tracking file (pipelines/orchestration/profile.py writes it), if the working directory is
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


def shown_uri(uri: str) -> str:
    """`uri` as it may be printed: a password in it replaced by *** (postgresql://user:***@host/db)."""
    parsed = urlparse(uri)
    if parsed.password is None:
        return uri
    return urlunparse(parsed._replace(netloc=f"{parsed.username}:***@{parsed.netloc.rsplit('@', 1)[1]}"))


DEFAULT_PORTS = {"http": 80, "https": 443, "postgresql": 5432, "mysql": 3306, "mssql": 1433}


def unusable(uri: str, timeout: float = 2.0) -> str | None:
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
        return problem(e)


def _sqlite_problem(uri: str, timeout: float) -> str | None:
    """What keeps a sqlite store from taking a run (its file or folder not writable, a full disk, a lock held by
    another writer, not a database, missing and uncreatable), or None."""
    path = sqlite_path(uri)
    if path is None:  # sqlite:// is in memory
        return None
    try:
        if (why := _file_problem(path)) or not path.exists():
            return why
    except OSError as e:  # a path the file system refuses to look at (too long, a folder that cannot be searched)
        return problem(e)
    try:
        con = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=timeout, isolation_level=None)
    except sqlite3.Error as e:
        return problem(e)
    try:
        con.execute("SELECT count(*) FROM sqlite_master")  # reads the schema: a file that is no database fails here
        con.execute("BEGIN IMMEDIATE")  # the lock every write takes: another writer holding it fails after `timeout`
        # A write, rolled back: sqlite grants the lock on a file it cannot write, and a full disk fails only once
        # sqlite writes its journal.
        con.execute(f"CREATE TABLE {PROBE_TABLE} (x)")
    except sqlite3.Error as e:
        return problem(e)
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


def _message_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else ""


def classify(e: BaseException) -> tuple[str, str]:
    """(verb, reason) for an exception a store or the spool raised: ("cannot be written", "disk full"); an unknown
    one gives ("failed", "<its innermost type>: <first line>")."""
    chain = _chain(e)
    for verb, reason, errnos, words in FAULTS:
        for x in chain:
            if getattr(x, "errno", None) in errnos or any(w in _message_line(x).lower() for w in words):
                # the file the OS refused; not for a full disk, where shutil's copy names its source
                filename = getattr(x, "filename", None) if reason != "disk full" else None
                return verb, f"{reason}: {filename}" if filename else reason
    root = chain[-1]
    return "failed", f"{type(root).__name__}: {_message_line(root)[:160]}"


def problem(e: BaseException) -> str:
    """'<verb> (<reason>)' for an exception a store raised, in one line: "cannot be written (disk full)"."""
    verb, reason = classify(e)
    return f"{verb} ({reason})"


def store_problem(uri: str, e: BaseException) -> str:
    """What is wrong with the store at `uri`, which raised `e` inside MLflow: a local file's state says it more
    exactly than sqlite's message ("unable to open database file" for a folder where no journal can be created)."""
    path = sqlite_path(uri)
    return (path and _file_problem(path)) or problem(e)


def sqlite_path(uri: str) -> Path | None:
    """The file of a local sqlite store's URI; None for anything else (a server, in-memory sqlite)."""
    path = uri.removeprefix("sqlite:///").split("?")[0]
    return Path(path) if uri.startswith("sqlite:///") and Path(path).name else None
