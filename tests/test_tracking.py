"""MLflow tracking: real sqlite store; stages queue their runs in milliseconds and a logger writes them with their
real start and end; unreachable or silent servers warn in one line within seconds and lose nothing."""

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pandas as pd
import pytest

from pipelines.tracking import StageRun, flush, log_stage_run, queued, start_parent_run

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
    before = time.time()
    queued_at = time.perf_counter()
    entry = log_stage_run(StageRun(
        "train_ddpm", params={"train_ddpm": {"lr": 0.002, "network": {"name": "mlp"}}}, metrics={"final_loss": 0.2},
        series={"loss": [(s, 1.0 / s) for s in range(1, 1501)]}, tables={"t.json": pd.DataFrame({"a": [1, 2]})},
        artifacts=[art],
    ))
    assert entry is not None and time.perf_counter() - queued_at < 0.5  # milliseconds for a stage, not MLflow's imports
    art.write_text("overwritten by a later stage\n")  # the queued copy is what gets logged
    flush()
    assert queued() == []
    client = mlflow.MlflowClient(local_store)
    (run_id,) = [r.info.run_id for r in client.search_runs([client.get_experiment_by_name("trilemma").experiment_id])]
    r = client.get_run(run_id)
    assert r.info.status == "FINISHED" and r.info.run_name == "train_ddpm"
    # the run spans this process's life, imports included, up to the queueing: not the logger's few milliseconds
    assert r.info.start_time <= before * 1000 - 100 and r.info.end_time >= int(before * 1000)
    assert client.download_artifacts(run_id, "curve.csv", str(tmp_path / "dl")) and \
        (tmp_path / "dl" / "curve.csv").read_text() == "step,loss\n1,0.5\n"
    assert r.info.artifact_uri.startswith((tmp_path / "mlruns").as_uri())  # beside the store, not the cwd's mlruns
    assert r.data.params["train_ddpm.network.name"] == "mlp" and r.data.metrics["final_loss"] == 0.2
    assert len(client.get_metric_history(run_id, "loss")) == 1500  # more than one log_batch
    assert {a.path for a in client.list_artifacts(run_id)} == {"curve.csv", "t.json"}
    assert r.info.experiment_id == client.get_experiment_by_name("trilemma").experiment_id


def test_default_uri_is_sqlite_at_the_repo_root(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert log_stage_run(StageRun("prepare", metrics={"x": 1.0})) is not None
    assert flush() and (tmp_path / "mlflow.db").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_refused_connection_warns_in_one_line_and_keeps_the_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{_free_port()}")
    t0 = time.time()
    assert log_stage_run(StageRun("prepare", metrics={"x": 1.0})) is not None
    assert time.time() - t0 < 10
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: MLflow tracking at http://127.0.0.1:")
    assert "not logged" in err[0]
    assert flush() == [] and len(queued()) == 1  # still down: the run waits for a store that takes it
    assert "not logged" in capsys.readouterr().err


def test_silent_server_gives_up_within_seconds(tmp_path, monkeypatch, capsys):
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
    monkeypatch.chdir(tmp_path)
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{srv.getsockname()[1]}")
        t0 = time.time()
        log_stage_run(StageRun("prepare", metrics={"x": 1.0}))  # the port answers, so the stage queues and goes on
        assert time.time() - t0 < 1
        assert flush() == [] and time.time() - t0 < 40  # the loggers (background, then this one) give up in seconds
        assert "not logged" in capsys.readouterr().err and len(queued()) == 1
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
    code = (f"import sqlite3, sys, time; c = sqlite3.connect({str(db)!r}, isolation_level=None); "
            f"c.execute('BEGIN {mode}'); print('held', flush=True); time.sleep(120)")
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
        assert len(flush()) == 1
        capsys.readouterr()
        holder = _hold_lock(db, "EXCLUSIVE" if fault == "locked exclusive" else "IMMEDIATE")
    try:
        t0 = time.time()
        log_stage_run(StageRun("prepare", metrics={"x": 1.0}))
        assert time.time() - t0 < 10
    finally:
        if holder:
            holder.kill()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: MLflow tracking at sqlite:///") and "not logged" in err[0], err


def test_a_database_server_that_is_down_is_found_within_seconds(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"postgresql://u:p@127.0.0.1:{_free_port()}/mlflow")
    t0 = time.time()
    log_stage_run(StageRun("prepare", metrics={"x": 1.0}))
    assert time.time() - t0 < 10 and "cannot connect to 127.0.0.1" in capsys.readouterr().err


def test_the_background_logger_writes_queued_runs_without_a_flush(local_store):
    """What a plain `dvc repro` relies on: each stage starts the logger, which empties the spool on its own."""
    for stage in ("prepare", "train_ddpm", "sample@ddpm-4"):
        log_stage_run(StageRun(stage, metrics={"x": 1.0}))
    deadline = time.time() + 60
    while queued() and time.time() < deadline:
        time.sleep(0.2)
    assert queued() == []
    runs = mlflow.MlflowClient(local_store).search_runs(["1"], order_by=["attributes.start_time ASC"])
    assert sorted(r.info.run_name for r in runs) == ["prepare", "sample@ddpm-4", "train_ddpm"]


def test_an_unreadable_queued_run_is_set_aside_and_the_rest_are_logged(local_store, capsys):
    first = log_stage_run(StageRun("prepare", metrics={"x": 1.0}))
    flush()
    bad = log_stage_run(StageRun("train_ddpm", metrics={"x": 1.0}))
    (bad / "record.json").write_text("{ not json")
    log_stage_run(StageRun("sample@ddpm-4", metrics={"x": 2.0}))
    flush()
    assert queued() == [] and bad.with_name(bad.name + ".bad").is_dir() and first is not None
    names = {r.info.run_name for r in mlflow.MlflowClient(local_store).search_runs(["1"])}
    assert names == {"prepare", "sample@ddpm-4"}


KIND = "mlflow.experimentKind"


def test_the_experiment_is_marked_as_machine_learning(local_store, monkeypatch):
    """MLflow 3's UI opens an experiment on its GenAI overview unless its kind tag marks it as classic ML: a new
    experiment gets the tag, one created before without it gets it with the next run, a user's own kind stays."""
    assert log_stage_run(StageRun("prepare", metrics={"x": 1.0})) is not None and flush()
    client = mlflow.MlflowClient(local_store)
    assert client.get_experiment_by_name("trilemma").tags[KIND] == "custom_model_development"

    older = client.create_experiment("older", artifact_location=(Path.cwd() / "mlruns").as_uri())  # MLflow's: no kind
    mine = client.create_experiment("mine", artifact_location=(Path.cwd() / "mlruns").as_uri(),
                                    tags={KIND: "genai_development"})
    assert KIND not in client.get_experiment(older).tags
    for name in ("older", "mine"):
        monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", name)
        log_stage_run(StageRun("prepare", metrics={"x": 1.0}))
        assert flush()
    assert client.get_experiment(older).tags[KIND] == "custom_model_development"
    assert client.get_experiment(mine).tags[KIND] == "genai_development"
    # the sweep's run goes through the same lookup
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "sweeps")
    assert start_parent_run("full-sweep x", {}, {}, local_store)
    assert client.get_experiment_by_name("sweeps").tags[KIND] == "custom_model_development"


def test_the_sweeps_run_holds_the_table_and_the_claims(local_store, tmp_path):
    """What the flow's final tasks log to the sweep's run, found by suffix among the table and claims stages' outputs
    (trilemma.json is a plain output, not a DVC metric): the table's cells as `<cell>.<column>` metrics, each claim's
    status as a tag `claim.<id>` (more than one log_batch of tags), the counts as metrics, the claims' files."""
    from pipelines.flow import log_claims, log_table, output_files

    m = tmp_path / "metrics"
    (m / "claims").mkdir(parents=True)
    (m / "trilemma.json").write_text(json.dumps({"ddpm-4": {"hq_fraction": 0.5, "sampler": "ddpm"}}))
    (m / "trilemma.csv").write_text("cell,hq_fraction\nddpm-4,0.5\n")
    (m / "trilemma.md").write_text("| cell | hq_fraction |\n")
    statuses = ["holds"] * 100 + ["fails"] * 20 + ["not measured"] * 5
    claims = [{"id": f"claim-{i}", "paper": "p", "source": "s", "claim": "c", "paper_figure": None, "status": st,
               "figure": "1", "checks": []} for i, st in enumerate(statuses)]
    summary = {"holds": 100, "fails": 20, "not measured": 5, "total": 125}
    (m / "claims.json").write_text(json.dumps({"summary": summary, "claims": claims}))
    (m / "claims.md").write_text("| claim | holds? |\n")

    def outs(*names):
        return [SimpleNamespace(fs_path=str(m / n), metric=n == "claims") for n in names]

    table = output_files(outs("trilemma.md", "trilemma.json", "trilemma.csv"))
    claims_files = output_files(outs("claims.json", "claims.md", "claims"))  # metrics/claims/: a directory, left out
    assert claims_files == {"json": [m / "claims.json"], "tables": [], "figures": [], "text": [m / "claims.md"]}
    parent = start_parent_run("full-sweep x", {}, {}, local_store)
    assert log_table.fn(table, parent, local_store, [{"stage": "table", "status": "ran"}]) == str(m / "trilemma.md")
    assert log_claims.fn(claims_files, parent, local_store) == summary
    client = mlflow.MlflowClient(local_store)
    r = client.get_run(parent)
    assert r.data.metrics["ddpm-4.hq_fraction"] == 0.5 and "ddpm-4.sampler" not in r.data.metrics
    assert {k: v for k, v in r.data.tags.items() if k.startswith("claim.")} == {
        f"claim.{c['id']}": c["status"] for c in claims}
    assert {k: r.data.metrics[k] for k in ("claims.holds", "claims.fails", "claims.not_measured")} == {
        "claims.holds": 100, "claims.fails": 20, "claims.not_measured": 5}
    assert {"claims.md", "claims.json", "trilemma.md", "trilemma.json", "stages.json"} <= {
        a.path for a in client.list_artifacts(parent)}
    assert log_claims.fn({}, parent, local_store) is None  # the claims stage not swept: nothing to read
