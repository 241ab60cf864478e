"""The README's commands work as written: every ```sh block runs verbatim, in a checkout a new user has after
`make repro` (conftest's small_run: a fresh clone with the DAG built at tiny budgets), or is listed in NOT_RUN with why.

The MLflow block runs until the server answers, and the address it prints is opened in headless Chromium with an
empty profile, as a new user's browser would: the page must be the experiment's runs table (MLflow 3 opens a new
browser on its GenAI overview otherwise). The Prefect blocks run as written too, on Prefect's default port 4200 with
the README's own `prefect config set`, in a Prefect home of the test's own.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, copy_of, stage_env

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium")
# A block is known by a command in it; the blocks not run here, and why.
NOT_RUN = {
    "make demo": "the whole DAG at demo, full and mnist budgets (2 to 80 minutes) and the suite itself; the suite's "
                 "end-to-end tests run the same DAG at tiny budgets (conftest.small_run, tests/pipelines/stages/test_images.py)",
}
RUN = ("dvc repro sample@", "make ui", "prefect server start", "python -m pipelines.orchestration.flow serve")


def shell_blocks(text: str) -> list[str]:
    """The README's ```sh blocks, in order."""
    return re.findall(r"^```sh\n(.*?)^```", text, flags=re.S | re.M)


def block(key: str) -> str:
    """The one README block holding `key`."""
    (found,) = [b for b in shell_blocks((ROOT / "README.md").read_text()) if key in b]
    return found


def test_every_readme_block_is_run_or_says_why():
    """A new block fails the suite until a test runs it or NOT_RUN says why not."""
    for b in shell_blocks((ROOT / "README.md").read_text()):
        keys = [k for k in (*RUN, *NOT_RUN) if k in b]
        assert len(keys) == 1, f"README block with {keys or 'no known command'}:\n{b}"


def user_env(home: Path, **extra: str) -> dict[str, str]:
    """A new user's shell: the system PATH (the blocks put the venv first themselves), a home of the test's own with
    a git identity (`dvc exp run` commits its experiments)."""
    home.mkdir(parents=True, exist_ok=True)
    (home / ".gitconfig").write_text("[user]\n\tname = A User\n\temail = user@localhost\n")
    env = stage_env(HOME=str(home), PREFECT_HOME=str(home / ".prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
                    PREFECT_CLI_COLORS="false", COLUMNS="200", **extra)
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if Path(p) != Path(sys.executable).parent)
    for key in [k for k in env if k.startswith(("PREFECT_API", "DVC_", "TRILEMMA_"))]:
        del env[key]
    return env


@pytest.fixture
def checkout(small_run, tmp_path) -> Path:
    """A copy of the built tiny checkout, with the project's venv where `make install` puts it."""
    repo = copy_of(small_run, tmp_path / "repo")
    (repo / ".venv").symlink_to(Path(sys.executable).parents[1])
    dry = subprocess.run(["make", "-n", "ui"], cwd=repo, capture_output=True, text=True, env=user_env(tmp_path))
    assert "pip install" not in dry.stdout, "make would reinstall the venv"  # it is the suite's own
    return repo


def run_block(text: str, repo: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    """A block as a user's shell runs it, line by line, stopping at the first command that fails."""
    return subprocess.run(["bash", "-eo", "pipefail", "-c", text], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_the_dvc_block_runs_as_written(checkout, tmp_path):
    proc = run_block(block("dvc repro sample@"), checkout, user_env(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "0.5" in proc.stdout  # dvc exp show: the experiment's changed eta
    assert (checkout / "dvc_plots/index.html").is_file()


def chromium_dom(url: str, profile: Path, wait_ms: int = 15000) -> str:
    """The DOM of `url` after its scripts ran, in headless Chromium with an empty profile (a new user's browser)."""
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--window-size=1440,900", f"--virtual-time-budget={wait_ms}"]
    proc = subprocess.run([CHROMIUM, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "</html>" in proc.stdout, proc.stderr[-2000:]
    return proc.stdout


def page_text(dom: str) -> str:
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", dom)))


def stop_group(proc: subprocess.Popen) -> None:
    """Stop a process started in a session of its own, and what it started: SIGTERM, then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=15)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_make_ui_opens_a_new_browser_on_the_experiments_runs(checkout, tmp_path):
    """`make ui` as written, until the server answers; its address in a browser with an empty profile shows the
    trilemma experiment's runs table, not MLflow's GenAI overview."""
    log = tmp_path / "ui.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(["bash", "-eo", "pipefail", "-c", block("make ui")], cwd=checkout,
                                env=user_env(tmp_path), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 120
        while not (m := re.search(r"^MLflow UI: (\S+)", log.read_text(), flags=re.M)):
            assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        url = m.group(1)
        assert url.startswith("http://127.0.0.1:") and "#/experiments/" in url
        dom = chromium_dom(url, tmp_path / "browser")
    finally:
        stop_group(proc)
    title = re.search(r"<title>(.*?)</title>", dom, flags=re.S).group(1)
    headings = [page_text(h).strip() for h in re.findall(r"<h2\b.*?</h2>", dom, flags=re.S)]
    assert title.startswith("Runs - ") and "Runs" in headings, (title, headings)
    assert "Overview" not in headings and "Detect Issues" not in dom
    text = page_text(dom)
    assert "claims" in text and "sample@ddim-4" in text, text[:2000]  # the checkout's own stage runs


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.skipif(not port_free(4200), reason="port 4200, where the README's Prefect block starts its server, "
                                                "is taken on this machine")
def test_the_prefect_blocks_run_as_written(checkout, tmp_path):
    """The server block, then the serve-and-run block, each verbatim: the deployment is found and its flow run
    completes (the checkout is built, so every stage is up to date and skipped)."""
    env = user_env(tmp_path, PREFECT_RUNNER_POLL_FREQUENCY="1")
    serving = None
    try:
        server = run_block(block("prefect server start"), checkout, env)
        assert server.returncode == 0, server.stdout + server.stderr
        sweep = run_block(block("python -m pipelines.orchestration.flow serve"), checkout, env, timeout=600)
        pid_file = checkout / ".flow-serve.pid"
        serving = int(pid_file.read_text()) if pid_file.is_file() else None
        assert sweep.returncode == 0, sweep.stdout[-3000:] + sweep.stderr[-3000:]
        assert "serving diffusion/full-sweep" in sweep.stdout and "Completed" in sweep.stdout, sweep.stdout[-3000:]
    finally:
        if serving:
            try:
                os.killpg(serving, signal.SIGTERM)  # the served deployment, in a session of its own
            except ProcessLookupError:
                pass
        subprocess.run(["bash", "-c", "export PATH=$PWD/.venv/bin:$PATH; prefect server stop"], cwd=checkout, env=env,
                       capture_output=True, timeout=60)
