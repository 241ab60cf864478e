"""`make ui`: MLflow's UI on 127.0.0.1, opened on the runs of this checkout's experiment.

    python -m pipelines.orchestration.ui [--port 5000] [--experiment NAME]

Starts `mlflow server` on the store the stages log to (`pipelines.plumbing.tracking.tracking_uri`: MLFLOW_TRACKING_URI, a
profile workspace's store, else `<repo>/mlflow.db`), waits until it answers, and prints the address of the
experiment's runs table; Ctrl-C stops the server. Against a tracking server (an http(s) URI) it starts nothing and
prints that server's address.

Why an address and not just the server: MLflow 3's UI keeps its sidebar's "GenAI / Model training" choice in the
browser's local storage, GenAI by default, and does not follow the experiment's `mlflow.experimentKind` tag (MLflow
issue #24498), so a new browser opens any experiment on the GenAI overview (traces, latency, "No data"). The query
`?workflowType=machine_learning` in the address is what switches it; checked in headless Chromium with an empty
profile (tests/test_readme.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

import psutil

from pipelines.plumbing.tracking_store import experiment_name, shown_uri, tracking_uri

HOST = "127.0.0.1"  # the UI shows every run and its artifacts: never on a public interface by default
ML_VIEW = "workflowType=machine_learning"  # the UI's "Model training" view: the runs table, not GenAI's overview


def free_port(start: int, tries: int = 50) -> int:
    """`start`, or the next port after it that nothing on HOST listens on."""
    for port in range(start, start + tries):
        with socket.socket() as s:
            if s.connect_ex((HOST, port)) != 0:
                return port
    raise SystemExit(f"error: no free port in {start}..{start + tries - 1} on {HOST}; pass --port")


def runs_url(server: str, experiment_id: str | None) -> str:
    """The UI's address of an experiment's runs table in the Model training view (the UI's home without an id)."""
    return f"{server}/#/experiments/{experiment_id}?{ML_VIEW}" if experiment_id else f"{server}/#/?{ML_VIEW}"


def experiment_id(server: str, name: str) -> str | None:
    """The id of experiment `name` on the server at `server` (its REST API), or None where it has none yet."""
    query = urllib.parse.urlencode({"experiment_name": name})
    try:
        with urllib.request.urlopen(f"{server}/api/2.0/mlflow/experiments/get-by-name?{query}", timeout=10) as r:
            return json.load(r)["experiment"]["experiment_id"]
    except urllib.error.HTTPError as e:
        if e.code == 404:  # RESOURCE_DOES_NOT_EXIST: no stage has logged yet
            return None
        raise


def wait_until_healthy(server: str, proc: subprocess.Popen | None, timeout: float = 120) -> None:
    """Return once `server` answers /health; SystemExit if it does not within `timeout` s or `proc` exits first."""
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{server}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"error: mlflow server exited with status {proc.returncode} before answering")
        if time.time() > deadline:
            raise SystemExit(f"error: MLflow at {server} did not answer within {timeout:.0f} s")
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.orchestration.ui", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=5000, help="the first port to try on 127.0.0.1 (default 5000)")
    parser.add_argument("--experiment", help="the experiment to open (default: the one the stages log to, "
                                             "MLFLOW_EXPERIMENT_NAME or trilemma)")
    args = parser.parse_args(argv)
    uri, name = tracking_uri(), args.experiment or experiment_name()
    if urllib.parse.urlparse(uri).scheme in ("http", "https"):  # a tracking server: its own UI
        server = uri.rstrip("/")
        wait_until_healthy(server, None, timeout=10)
        print(f"MLflow UI: {runs_url(server, experiment_id(server, name))}", flush=True)
        return 0
    port = free_port(args.port)
    server = f"http://{HOST}:{port}"
    # MLflow's job runner (six huey consumers) serves GenAI jobs this project never starts.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with tempfile.TemporaryFile("w+") as log:  # the server's own lines, shown only if it fails to start
        proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", HOST,
                                 "--port", str(port), "--workers", "1"], env=env, stdout=log, stderr=log)
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # a kill runs `finally` too
        try:
            try:
                wait_until_healthy(server, proc)
            except SystemExit:
                log.seek(0)
                print(log.read()[-3000:], file=sys.stderr)
                raise
            found = experiment_id(server, name)
            print(f"MLflow UI: {runs_url(server, found)}" + ("" if found else f"  (no run in {name} yet)"), flush=True)
            print(f"  the runs of experiment {name} in {shown_uri(uri)}; Ctrl-C stops the server", flush=True)
            return proc.wait()
        except KeyboardInterrupt:
            return 0
        finally:
            stop(proc)


def stop(proc: subprocess.Popen, timeout: float = 10) -> None:
    """Stop the server and what it started (uvicorn's worker): SIGINT, then SIGKILL after `timeout` s."""
    try:
        tree = [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]
    except psutil.NoSuchProcess:
        return
    for p in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGINT)  # uvicorn's clean shutdown
    _, alive = psutil.wait_procs(tree, timeout=timeout)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()


if __name__ == "__main__":
    sys.exit(main())
