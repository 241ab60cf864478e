"""One sweep spread over a work pool, with every server real and on 127.0.0.1: a Prefect server, two process workers
in two clones of the repository (two hosts), `mlflow server` with a SQL store and served artifacts, and a local folder
as the DVC remote. One worker is killed mid-stage and a third host joins; the sweep still ends with the
single-host run's table."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pandas as pd
import psutil
import pytest

from conftest import SMALL_SWEEPS, TINY, copy_of, run, stage_env, write_params
from servers import free_port, start, stop, wait_healthy

pytestmark = pytest.mark.e2e

TIME_COLUMNS = ["wall_s_per_1k", "wall_s_per_1k_iqr"]  # measured: the one part of the table that two runs differ in
GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]


@pytest.fixture
def mlflow_server(tmp_path):
    """`mlflow server` with a sqlite store and served artifacts in a folder of its own; its URI and artifact folder."""
    folder, port = tmp_path / "mlflow-server", free_port()
    folder.mkdir()
    log = tmp_path / "mlflow-server.log"
    proc = start(["mlflow", "server", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
                  "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
                  "--workers", "1"], folder, log)
    try:
        wait_healthy(f"http://127.0.0.1:{port}/health", proc, log, timeout=120)
        yield f"http://127.0.0.1:{port}", folder / "artifacts"
    finally:
        stop(proc)


def kill_a_host_mid_training(workers: dict[Path, subprocess.Popen], sweep: subprocess.Popen) -> tuple[Path, str]:
    """Wait until a worker that has finished a stage (its dvc.lock exists) runs a training stage, then kill it and
    everything it started, as a host dies; that worker's checkout and the stage (its DVC address)."""
    deadline = time.time() + 600
    while sweep.poll() is None and time.time() < deadline:
        for host, worker in workers.items():
            tree = [psutil.Process(worker.pid), *psutil.Process(worker.pid).children(recursive=True)]
            training = [p for p in tree if any(arg.startswith("pipelines.stages.train_") for arg in _cmdline(p))]
            if training and (host / "dvc.lock").exists():
                stage = training[0].environ()["DVC_STAGE"]
                for p in tree:
                    p.kill()
                return host, stage
        time.sleep(0.2)
    raise AssertionError("no worker ran a training stage after finishing another one")


def flow_runs(env: dict[str, str]) -> list:
    """Every flow run on the test's Prefect server."""
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}), get_client(sync_client=True) as client:
        return client.read_flow_runs(limit=200)


def _cmdline(p: psutil.Process) -> list[str]:
    try:
        return p.cmdline()
    except psutil.Error:
        return []


def test_a_sweep_spreads_over_two_hosts_and_survives_one_dying(prefect_server, mlflow_server, small_run,
                                                               tiny_template, tmp_path):
    uri, artifacts = mlflow_server
    head = copy_of(tiny_template, tmp_path / "head")  # where the sweep is started, and restored at the end
    write_params(head, TINY, SMALL_SWEEPS)  # small_run's params: its table is the single-host run's
    (head / "dvc.lock").unlink()
    run(["dvc", "remote", "add", "-d", "shared", str(tmp_path / "dvc-remote")], head)
    run([*GIT, "commit", "-qam", "the sweep's params and DVC remote"], head)
    hosts = [tmp_path / "host-a", tmp_path / "host-b", tmp_path / "host-c"]  # host-c joins once a host has died
    for host in hosts:
        run(["git", "clone", "-q", str(head), str(host)], tmp_path)

    env = prefect_server
    run(["prefect", "work-pool", "create", "gpu-pool", "--type", "process"], head, **env)
    run(["prefect", "--no-prompt", "deploy", "--all"], head, **env)

    def worker(host: Path) -> subprocess.Popen:
        return start(["prefect", "worker", "start", "--pool", "gpu-pool", "--limit", "1", "--name", host.name], host,
                     tmp_path / f"{host.name}.log", TRILEMMA_CHECKOUT=str(host), **env)

    workers = {host: worker(host) for host in hosts[:2]}
    try:
        code = ("from pipelines.orchestration.flow_sweep import diffusion\n"
                "print('table', diffusion(spread=True, retries=1, host_timeout_s=60))")
        with open(tmp_path / "sweep.log", "w") as log:
            sweep = subprocess.Popen([sys.executable, "-c", code], cwd=head, stdout=log, stderr=subprocess.STDOUT,
                                     env=stage_env(MLFLOW_TRACKING_URI=uri, **env))
        dead, killed = kill_a_host_mid_training(workers, sweep)
        workers[hosts[2]] = worker(hosts[2])
        assert sweep.wait(timeout=900) == 0, (tmp_path / "sweep.log").read_text()[-3000:]
    finally:
        for proc in workers.values():
            stop(proc, signals=(signal.SIGTERM, signal.SIGINT))
    sweep_log = (tmp_path / "sweep.log").read_text()
    assert "rebuilt" not in sweep_log, sweep_log  # the head restored every stage the hosts ran, and ran none

    # The table equals the single-host run's in every value but the measured times.
    table, single = (pd.read_csv(repo / "metrics/trilemma.csv").drop(columns=TIME_COLUMNS)
                     for repo in (head, small_run))
    pd.testing.assert_frame_equal(table, single)
    assert "up to date" in run(["dvc", "status"], head).stdout

    # Both first hosts ran stages; the dead host's stage cost one retry, on another host, and nothing else did.
    client = mlflow.MlflowClient(uri)
    (sweep_run,) = [r for r in client.search_runs([client.get_experiment_by_name("trilemma").experiment_id])
                    if "mlflow.parentRunId" not in r.data.tags]
    report = pd.read_json(client.download_artifacts(sweep_run.info.run_id, "stages.json", str(tmp_path)),
                          orient="split").set_index("stage")
    ran = report[report["status"] == "ran"]
    assert {h for h in hosts[:2] if ran["host"].str.endswith(str(h)).any()} == set(hosts[:2]), report
    assert report.loc[killed, "attempts"] == 2 and not report.loc[killed, "host"].endswith(str(dead)), report
    assert not report["rebuilt"].fillna("").any(), report
    # The automation crashed the dead host's stage run and no other flow run: not the sweep's, which completed.
    states = {(r.name, r.state.type.value) for r in flow_runs(env)}
    assert {(name, state) for name, state in states if state != "COMPLETED"} == {(killed, "CRASHED")}, states
    assert (report.drop(index=killed)["attempts"] == 1).all(), report

    # One MLflow run per stage, nested in the sweep's, every file sent through the server: no host wrote its own.
    nested = [r for r in client.search_runs([sweep_run.info.experiment_id]) if r.info.run_id != sweep_run.info.run_id]
    assert {r.data.tags["mlflow.parentRunId"] for r in nested} == {sweep_run.info.run_id}
    assert sorted(r.data.tags["mlflow.runName"] for r in nested) == sorted(set(ran.index) - {"validate"})
    assert client.get_experiment_by_name("trilemma").artifact_location.startswith("mlflow-artifacts:")
    assert any(p.is_file() for p in artifacts.rglob("*"))
    assert not [repo for repo in (head, *hosts) if (repo / "mlruns").exists()]
