"""Real servers the tests start on 127.0.0.1 and stop by PID: a Prefect server, an MLflow server, Prefect workers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx

from conftest import stage_env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prefect_env(tmp_path: Path, port: int) -> dict[str, str]:
    return {"PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_RUNNER_POLL_FREQUENCY": "1",
            "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_CLI_COLORS": "false", "COLUMNS": "200"}


def start(cmd: list[str], cwd: Path, log: Path, **env: str) -> subprocess.Popen:
    """A long-running process in its own session (so its children stop with it), output to a file."""
    with open(log, "w") as f:
        return subprocess.Popen(cmd, cwd=cwd, env=stage_env(**env), stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)


def stop(proc: subprocess.Popen, signals=(signal.SIGTERM,)) -> None:
    """Stop a process started by `start` and its children, by PID; a Prefect worker needs SIGTERM then SIGINT."""
    for sig in (*signals, signal.SIGKILL):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            continue
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # stragglers in the session, e.g. a flow run's subprocess
    except ProcessLookupError:
        pass


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    """Return once `url` answers 200; fail with the server's log if it exits or `timeout` passes first."""
    deadline = time.time() + timeout
    while True:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert proc.poll() is None and time.time() < deadline, log.read_text()
        time.sleep(0.5)
