"""DVC as the flow calls it: a command streamed into Prefect's log, what it did to each stage, its error line, and
the DVC remote that hosts share (`dvc remote default`, `dvc push --run-cache`)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import deque
from pathlib import Path

from pipelines.orchestration.flow_plan import SweepError

# DVC's hints after a commit, not news to a scheduler
HINTS = ("To track the changes with git", "git add dvc.lock", "To enable auto staging", "dvc config core.autostage",
         "Use `dvc push`")

# what `dvc repro` prints when it runs a stage, or restores its outputs from the run-cache
DID = ((re.compile(r"Running stage '([^']+)'"), "ran"),
       (re.compile(r"Stage '([^']+)' is cached - skipping run"), "restored"))


def dvc_command(*args: str) -> list[str]:
    """`dvc <args>` with this Python's DVC."""
    return [sys.executable, "-m", "dvc", *args]


def stream(cmd: list[str], cwd: str | Path, env: dict[str, str], logger) -> tuple[int, list[str], dict[str, str]]:
    """Run cmd, sending each output line to Prefect's log as it comes; exit code, last lines, and what DVC did to each
    stage it names (stage -> "ran" or "restored"; a stage it left alone is absent)."""
    tail: deque[str] = deque(maxlen=40)
    did: dict[str, str] = {}
    with subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          bufsize=1) as proc:
        for line in proc.stdout:
            line = line.rstrip()
            if not line or line.strip().startswith(HINTS):
                continue
            tail.append(line)
            for pattern, what in DID:
                if m := pattern.search(line):
                    did.setdefault(m.group(1), what)
            level = logger.warning if line.lower().startswith("warning") else \
                logger.error if line.lower().startswith(("error", "traceback")) else logger.info
            level(line)
    return proc.returncode, list(tail), did


def stage_error(lines: list[str]) -> str:
    """The stage's own last error line, not DVC's summary of it."""
    own = [line for line in lines if not line.startswith("ERROR: failed to reproduce")]
    return (own or lines or ["no output"])[-1]


def default_remote(root: Path) -> str:
    """The repository's default DVC remote, which `share_cache` and `spread` pull from and push to."""
    proc = subprocess.run(dvc_command("remote", "default"), cwd=root, capture_output=True, text=True)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise SweepError("the repository has no default DVC remote, which share_cache and spread need; add one with "
                         "`dvc remote add -d <name> <url>`")
    return proc.stdout.strip()


def push_cache(root: Path, logger) -> None:
    """`dvc push --run-cache`: the checkout's outputs and stage runs, for other hosts to restore."""
    proc = subprocess.run(dvc_command("--wait-for-lock", "push", "--run-cache"), cwd=root, capture_output=True,
                          text=True)
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    if proc.returncode != 0:
        raise SweepError(f"dvc push --run-cache: {stage_error(lines)}")
    logger.info(f"dvc push --run-cache: {lines[-1] if lines else 'nothing to push'}")


def stage_environment(uri: str, parent: str | None) -> dict[str, str]:
    """The stages' environment: this Python's bin first on PATH, the sweep's tracking URI and parent run."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "MLFLOW_TRACKING_URI": uri, "PYTHONUNBUFFERED": "1"}
    env.pop("TRILEMMA_PARENT_RUN_ID", None)
    return env | ({"TRILEMMA_PARENT_RUN_ID": parent} if parent else {})
