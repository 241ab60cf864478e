"""Serving the Prefect flow `diffusion` (pipelines/orchestration/flow_sweep.py) as deployment diffusion/full-sweep.

    python -m pipelines.orchestration.flow serve [--background] [--wait SECONDS]   # serve it from this checkout
    prefect deployment run diffusion/full-sweep --watch

One machine, no worker: `serve` waits for the Prefect server to answer, then serves the deployment from this
checkout; `--background` does so in a process of its own and returns once that process polls for runs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
from prefect.settings import PREFECT_RUNNER_POLL_FREQUENCY, get_current_settings, temporary_settings

from pipelines.orchestration.flow_sweep import DEPLOYMENT, diffusion

def server_problem(url: str | None, timeout: float = 3.0) -> str | None:
    """None if the Prefect API at `url` answers its health check within `timeout` seconds, else why not."""
    if not url:
        return ("PREFECT_API_URL is not set; start a server (prefect server start) and point at it: "
                "prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api")
    try:
        httpx.get(f"{url.rstrip('/')}/health", timeout=timeout).raise_for_status()
    except httpx.HTTPError as e:
        return f"Prefect server at {url} is unreachable ({type(e).__name__}: {e}); start it with `prefect server start`"
    return None


def wait_for_server(url: str | None, wait: float) -> str | None:
    """None once the Prefect API at `url` answers, within `wait` seconds (a server started a moment ago takes about
    10 s); else why not. Says once that it waits."""
    deadline, said = time.time() + wait, False
    while (why := server_problem(url)) and url and time.time() < deadline:
        if not said:
            print(f"waiting up to {wait:.0f} s for the Prefect server at {url} ...", flush=True)
            said = True
        time.sleep(1)
    return why


SERVE_LOG, SERVE_PID = ".flow-serve.log", ".flow-serve.pid"  # `serve --background`'s, at the repository root


def _serving(pid_file: Path) -> int | None:
    """The pid of a `serve --background` process of this checkout that is still running, or None."""
    try:
        pid = int(pid_file.read_text())
        return pid if "pipelines.orchestration.flow" in " ".join(psutil.Process(pid).cmdline()) else None
    except (OSError, ValueError, psutil.Error):
        return None


def _last_polled(url: str) -> str | None:
    """When a runner last asked the server for deployment diffusion/full-sweep's scheduled runs (the server's
    clock), or None if the deployment is not registered, was never polled, or the server did not answer."""
    try:
        r = httpx.get(f"{url.rstrip('/')}/deployments/name/diffusion/{DEPLOYMENT}", timeout=3)
    except httpx.HTTPError:
        return None
    return r.json().get("last_polled") if r.status_code == 200 else None


def serve_in_background(root: Path, url: str, timeout: float = 120) -> int:
    """`serve` in a session of its own (it outlives the shell), returning once that process polls the server for the
    deployment's runs, so that a `prefect deployment run` right after it is picked up. Registration alone is not the
    sign: a deployment served before (from another checkout, or a serve that has stopped) is registered already."""
    pid_file, log_path = root / SERVE_PID, root / SERVE_LOG
    if pid := _serving(pid_file):
        print(f"already serving diffusion/{DEPLOYMENT} from {root} (pid {pid}; log {log_path})")
        return 0
    before = _last_polled(url)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "pipelines.orchestration.flow", "serve", "--wait", "0"], cwd=root,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    pid_file.write_text(f"{proc.pid}\n")
    deadline = time.time() + timeout
    while proc.poll() is None and time.time() < deadline:
        if _last_polled(url) not in (None, before):
            print(f"serving diffusion/{DEPLOYMENT} from {root} (pid {proc.pid}; log {log_path}; stop it with "
                  f"`kill {proc.pid}`)")
            return 0
        time.sleep(0.5)
    tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
    print(f"error: the serving process {'exited' if proc.poll() is not None else 'did not poll for the deployment'}"
          f" within {timeout:.0f} s ({tail[0][:200]}); its log: {log_path}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.orchestration.flow", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help=f"serve deployment diffusion/{DEPLOYMENT} from this checkout (one machine, "
                                         "no worker)")
    serve.add_argument("--background", action="store_true",
                       help=f"in a process of its own, returning once the deployment is registered (log {SERVE_LOG})")
    serve.add_argument("--wait", type=float, default=60, metavar="SECONDS",
                       help="how long to wait for the Prefect server to answer (default 60)")
    args = parser.parse_args(argv)
    url = get_current_settings().api.url
    why = wait_for_server(url, args.wait)
    if why:
        print(f"error: {why}", file=sys.stderr)
        return 2
    root = Path(__file__).resolve().parents[2]
    if args.background:
        return serve_in_background(root, url)
    os.chdir(root)  # flow runs start here: the repository root
    # Prefect polls for new runs every 10 s by default; a local server answers a poll a second with ease.
    poll = {} if "PREFECT_RUNNER_POLL_FREQUENCY" in os.environ else {PREFECT_RUNNER_POLL_FREQUENCY: 1}
    with temporary_settings(updates=poll):
        diffusion.serve(name=DEPLOYMENT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
