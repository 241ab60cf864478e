"""MLflow tracking: real sqlite store; unreachable or silent servers warn in one line within seconds."""

import socket
import subprocess
import sys
import threading
import time

import mlflow
import pandas as pd
import pytest

from pipelines.tracking import StageRun, log_stage_run

from conftest import run


@pytest.fixture
def local_store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    return uri


def test_stage_run_lands_in_the_store(local_store, tmp_path):
    art = tmp_path / "curve.csv"
    art.write_text("step,loss\n1,0.5\n")
    run_id = log_stage_run(StageRun(
        "train_ddpm", params={"train_ddpm": {"lr": 0.002, "network": {"name": "mlp"}}}, metrics={"final_loss": 0.2},
        series={"loss": [(s, 1.0 / s) for s in range(1, 1501)]}, tables={"t.json": pd.DataFrame({"a": [1, 2]})},
        artifacts=[art],
    ))
    client = mlflow.MlflowClient(local_store)
    r = client.get_run(run_id)
    assert r.info.status == "FINISHED" and r.info.run_name == "train_ddpm"
    assert r.data.params["train_ddpm.network.name"] == "mlp" and r.data.metrics["final_loss"] == 0.2
    assert len(client.get_metric_history(run_id, "loss")) == 1500  # more than one log_batch
    assert {a.path for a in client.list_artifacts(run_id)} == {"curve.csv", "t.json"}
    assert r.info.experiment_id == client.get_experiment_by_name("trilemma").experiment_id


def test_default_uri_is_sqlite_at_the_repo_root(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert log_stage_run(StageRun("prepare", metrics={"x": 1.0})) is not None
    assert (tmp_path / "mlflow.db").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_refused_connection_warns_in_one_line(monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{_free_port()}")
    t0 = time.time()
    assert log_stage_run(StageRun("prepare", metrics={"x": 1.0})) is None
    assert time.time() - t0 < 10
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: MLflow tracking at http://127.0.0.1:") and "not logged" in err[0]


def test_silent_server_gives_up_within_seconds(monkeypatch, capsys):
    """A server that accepts connections and never answers would hang MLflow for ~20 minutes by default."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    conns = []
    stop = threading.Event()

    def accept_and_stay_silent():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conns.append(srv.accept()[0])
            except OSError:
                pass

    th = threading.Thread(target=accept_and_stay_silent, daemon=True)
    th.start()
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{srv.getsockname()[1]}")
        t0 = time.time()
        assert log_stage_run(StageRun("prepare", metrics={"x": 1.0})) is None
        assert time.time() - t0 < 30
        assert "not logged" in capsys.readouterr().err
    finally:
        stop.set()
        th.join()
        for c in conns:
            c.close()
        srv.close()


def test_stage_completes_when_tracking_is_down(tiny_repo):
    proc = run([sys.executable, "-m", "pipelines.prepare", "data/train.npz", "data/reference.npz"], tiny_repo,
               MLFLOW_TRACKING_URI=f"http://127.0.0.1:{_free_port()}")
    assert (tiny_repo / "data/train.npz").exists() and (tiny_repo / "data/reference.npz").exists()
    assert [line for line in proc.stderr.splitlines() if line.startswith("warning: MLflow")] != []


def _hold_lock(db, mode: str) -> subprocess.Popen:
    """Another process holding a sqlite lock on `db` (EXCLUSIVE: no reader either; IMMEDIATE: no other writer)."""
    code = (f"import sqlite3, sys, time; c = sqlite3.connect({str(db)!r}, isolation_level=None); c.execute('BEGIN {mode}'); "
            f"print('held', flush=True); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.mark.parametrize("fault", ["corrupt", "uncreatable", "locked exclusive", "locked by a writer"])
def test_an_unusable_local_store_warns_in_one_line_within_seconds(fault, tmp_path, monkeypatch, capsys):
    """MLflow retries a sqlite store it cannot open for about 100 s; a stage gives up in seconds."""
    db = tmp_path / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    monkeypatch.chdir(tmp_path)
    holder = None
    if fault == "corrupt":
        db.write_bytes(bytes(range(256)) * 20)
    elif fault == "uncreatable":
        (tmp_path / "file").write_text("a file, not a folder")
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'file' / 'mlflow.db'}")
    else:
        assert log_stage_run(StageRun("prepare", metrics={"x": 1.0})) is not None  # a working store, then locked
        capsys.readouterr()
        holder = _hold_lock(db, "EXCLUSIVE" if fault == "locked exclusive" else "IMMEDIATE")
    try:
        t0 = time.time()
        assert log_stage_run(StageRun("prepare", metrics={"x": 1.0})) is None
        assert time.time() - t0 < 10
    finally:
        if holder:
            holder.kill()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: MLflow tracking at sqlite:///") and "not logged" in err[0], err


def test_a_database_server_that_is_down_is_found_within_seconds(monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"postgresql://u:p@127.0.0.1:{_free_port()}/mlflow")
    t0 = time.time()
    assert log_stage_run(StageRun("prepare", metrics={"x": 1.0})) is None
    assert time.time() - t0 < 10 and "cannot connect to 127.0.0.1" in capsys.readouterr().err
