"""The background logger and its command: `python -m pipelines.plumbing.tracking flush [--background] [root]`.

The logger writes each queued run (pipelines/plumbing/tracking_spool.py) with the stage's real start and end, oldest
first, and removes it from the spool once it is in the store. `python -m pipelines.plumbing.tracking flush` does the same
in the foreground and returns when the spool is empty (`make repro` ends with it; the Prefect
flow calls `flush` before it closes the sweep's run). `flush` says in one line per store what
keeps its runs queued, and the foreground command then exits 1. A spool folder without a record
whose writer has died can never be finished: `flush` removes it with a warning.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import sys
from pathlib import Path

from pipelines.plumbing.atomic import pid_alive
from pipelines.plumbing.tracking_spool import ENTRY, RECORD, queued, spool_dir
from pipelines.plumbing.tracking_store import problem, shown_uri


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
            # imported here, with a run to log: MLflow's imports take about 2.4 s, and the logger that every stage
            # starts mostly finds another one holding the lock, or an empty spool, and exits without them
            from pipelines.plumbing.tracking_mlflow import attempt, log_record

            run_id, why = attempt(lambda uri: log_record(uri, record, entry), record["uri"])
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
        if pid_alive(int(m.group(1))):  # still writing it
            continue
        shutil.rmtree(entry, ignore_errors=True)
        if not entry.exists():  # else (a read-only spool) the next flush tries again
            removed.append(entry)
            print(f"warning: {entry}: half-written MLflow run removed (no {RECORD}; its writer, pid {m.group(1)}, "
                  f"has exited)", file=sys.stderr)
    return removed


def main(argv: list[str]) -> int:
    """`python -m pipelines.plumbing.tracking flush [--background] [root]`: log the queued stage runs."""
    args = [a for a in argv if a != "--background"]
    if not args or args[0] != "flush" or len(args) > 2:
        print("usage: python -m pipelines.plumbing.tracking flush [--background] [repository root]", file=sys.stderr)
        return 2
    root = args[1] if len(args) == 2 else None
    background = "--background" in argv
    if background:
        os.nice(10)  # the next stage, possibly timed, goes first
    try:
        problems = _flush(root, wait=not background)[1]
    except OSError as e:  # the spool itself: its lock or an entry cannot be written
        print(f"error: MLflow spool {spool_dir(root)} {problem(e)}", file=sys.stderr)
        return 1
    left = len(queued(root))
    if left and not problems and not background:  # queued after flush looked: a stage that ran meanwhile
        print(f"error: {left} MLflow runs still queued in {spool_dir(root)}", file=sys.stderr)
    return 1 if left and not background else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
