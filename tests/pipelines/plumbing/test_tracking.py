"""MLflow tracking: real sqlite store; stages queue their runs in milliseconds and a logger writes them with their
real start and end; unreachable or silent servers warn in one line within seconds and lose nothing."""

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pandas as pd
import pytest

from pipelines.plumbing.tracking import flush, main
from pipelines.plumbing.tracking_mlflow import drop_connections, log_record, start_parent_run
from pipelines.plumbing.tracking_spool import StageRun, log_stage_run, queued, spool_dir
from pipelines.plumbing.tracking_store import classify, store_problem

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
    flush()  # the stage's background logger may have taken the run first: either way the spool is empty after
    assert queued() == [] and (tmp_path / "mlflow.db").exists()


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
    proc = run([sys.executable, "-m", "pipelines.stages.prepare", "data/train.npz", "data/reference.npz"], tiny_repo,
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
        flush()
        assert queued() == []
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
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"postgresql://u:secret@127.0.0.1:{_free_port()}/mlflow")
    t0 = time.time()
    log_stage_run(StageRun("prepare", metrics={"x": 1.0}))
    err = capsys.readouterr().err
    assert time.time() - t0 < 10 and "cannot be reached (connection refused)" in err
    assert "postgresql://u:***@127.0.0.1:" in err and "secret" not in err  # the line goes to logs a team may share


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
    assert log_stage_run(StageRun("prepare", metrics={"x": 1.0})) is not None
    flush()  # here or in the stage's background logger, which may take the lock first
    assert queued() == []
    client = mlflow.MlflowClient(local_store)
    assert client.get_experiment_by_name("trilemma").tags[KIND] == "custom_model_development"

    older = client.create_experiment("older", artifact_location=(Path.cwd() / "mlruns").as_uri())  # MLflow's: no kind
    mine = client.create_experiment("mine", artifact_location=(Path.cwd() / "mlruns").as_uri(),
                                    tags={KIND: "genai_development"})
    assert KIND not in client.get_experiment(older).tags
    for name in ("older", "mine"):
        monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", name)
        log_stage_run(StageRun("prepare", metrics={"x": 1.0}))
        flush()
        assert queued() == []
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
    from pipelines.orchestration.flow_plan import output_files
    from pipelines.orchestration.flow_sweep import log_claims, log_table

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


# --- a store that cannot be written: one line with the reason, at the stage and at flush -------------------------


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory) -> Path:
    """A real MLflow sqlite store with its tables and no experiment yet, made once: each test copies the file, so that
    MLflow's 2 s of table creation is paid once and each test's experiment keeps its artifacts beside its own copy."""
    db = tmp_path_factory.mktemp("template") / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{db}").search_experiments()
    return db


def _store(empty_store: Path, folder: Path, monkeypatch) -> tuple[Path, str]:
    """A copy of the empty store in `folder`, made the tracking URI; its file and URI."""
    folder.mkdir(parents=True, exist_ok=True)
    db = Path(shutil.copy(empty_store, folder / "mlflow.db"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    return db, f"sqlite:///{db}"


@pytest.fixture
def chattr():
    """chattr +i / -i on a path (immutable: even root cannot write it, as a user's `chattr +i mlflow.db`), undone after
    the test; a skip where the file system or the process cannot set the attribute."""
    made = []

    def set_flag(flag: str, path: Path) -> None:
        proc = subprocess.run(["chattr", flag, str(path)], capture_output=True, text=True) \
            if shutil.which("chattr") else SimpleNamespace(returncode=1, stderr="no chattr")
        if proc.returncode:
            pytest.skip(f"chattr {flag} does not work here: {proc.stderr.strip()}")
        made.append(path)

    yield set_flag
    for path in reversed(made):
        subprocess.run(["chattr", "-i", str(path)], capture_output=True)


@pytest.fixture
def tmpfs(tmp_path):
    """A fresh 4 MiB file system (tmpfs) under tmp_path, to fill or remount read-only; a skip where mount is refused."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    cmd = ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)]
    proc = subprocess.run(cmd, capture_output=True, text=True) if shutil.which("mount") else \
        SimpleNamespace(returncode=1, stderr="no mount")
    if proc.returncode:
        pytest.skip(f"cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN): {proc.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=True)


def _fill(folder: Path) -> None:
    """Write into `folder` until its file system is full."""
    with open(folder / "filler", "wb") as f:
        try:
            while True:
                f.write(bytes(1 << 16))
                f.flush()
        except OSError as e:
            assert e.errno == 28  # ENOSPC


def _flush_command(cwd: Path, uri: str) -> subprocess.CompletedProcess:
    """`python -m pipelines.plumbing.tracking flush`, as a user runs it after `dvc repro`."""
    return run([sys.executable, "-m", "pipelines.plumbing.tracking", "flush"], cwd, check=False, MLFLOW_TRACKING_URI=uri)


def _stage_warning(capsys) -> str:
    """The stage's one stderr line (it must be exactly one)."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_an_immutable_store_is_named_in_one_line_at_the_stage_and_at_flush(empty_store, chattr, tmp_path,
                                                                             monkeypatch, capsys):
    """The user's report: `chattr +i mlflow.db` still grants sqlite's write lock, so the stage said nothing and
    `flush` printed a 90-line traceback. Now both say why in one line, flush exits 1, and once the store is writable
    again flush logs the run and exits 0."""
    db, uri = _store(empty_store, tmp_path, monkeypatch)
    monkeypatch.chdir(tmp_path)
    chattr("+i", db)
    assert log_stage_run(StageRun("prepare", metrics={"x": 1.0})) is not None
    line = _stage_warning(capsys)
    assert line.startswith(f"warning: MLflow tracking at {uri} unavailable, prepare not logged yet: "
                           "cannot be written (immutable file); queued in .mlflow-spool/"), line
    assert not (spool_dir() / "logger.log").exists()  # no background logger started to fail silently

    proc = _flush_command(tmp_path, uri)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.splitlines() == [f"error: MLflow store {uri} cannot be written (immutable file): 1 run not "
                                        f"logged, still queued in {spool_dir()}"], proc.stderr
    # MLflow's own failure on the same file, past the check: its wrapped exception gives the same reason
    with pytest.raises(Exception) as raised:
        log_record(uri, json.loads((queued()[0] / "record.json").read_text()), queued()[0])
    assert classify(raised.value) == ("cannot be written", "read-only file")
    assert store_problem(uri, raised.value) == "cannot be written (immutable file)"
    assert capsys.readouterr().err == ""  # MLflow logs the SQL error with its traceback; the caller says it in one line
    drop_connections(uri)  # as every failed attempt does: sqlite opened the file read-only, MLflow keeps it open

    subprocess.run(["chattr", "-i", str(db)], check=True)
    assert main(["flush"]) == 0 and queued() == []
    runs = mlflow.MlflowClient(uri).search_runs([mlflow.MlflowClient(uri).get_experiment_by_name("trilemma")
                                                .experiment_id])
    assert [(r.info.run_name, r.info.status) for r in runs] == [("prepare", "FINISHED")]


def test_a_failure_inside_mlflow_is_one_line_and_leaves_no_half_logged_run(empty_store, chattr, tmp_path,
                                                                            monkeypatch, capfd):
    """The store passes the check but MLflow fails midway (here: the artifact folder beside it is immutable): flush
    names the reason in one line instead of MLflow's logged traceback, exits 1, keeps the run queued, and the run
    MLflow had begun goes to its trash instead of staying RUNNING beside the one the next flush logs."""
    _, uri = _store(empty_store, tmp_path, monkeypatch)
    monkeypatch.chdir(tmp_path)
    art = tmp_path / "curve.csv"
    art.write_text("step,loss\n1,0.5\n")
    monkeypatch.setattr("pipelines.plumbing.tracking_spool._start_background_logger", lambda root: None)  # this test's flush only
    assert log_stage_run(StageRun("train_ddpm", metrics={"x": 1.0}, artifacts=[art])) is not None
    (tmp_path / "mlruns").mkdir()
    chattr("+i", tmp_path / "mlruns")
    capfd.readouterr()
    assert main(["flush"]) == 1 and len(queued()) == 1
    out, err = capfd.readouterr()
    assert out == "" and len(err.splitlines()) == 1, err
    assert err.startswith(f"error: MLflow store {uri} cannot be written (operation not permitted: {tmp_path}/mlruns/")
    assert err.rstrip().endswith(f"1 run not logged, still queued in {spool_dir()}")
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("trilemma").experiment_id
    assert client.search_runs([exp]) == [] and len(client.search_runs([exp], run_view_type=3)) == 1  # 3: all


@pytest.mark.parametrize("fault", ["read-only file system", "disk full", "immutable folder"])
def test_each_unwritable_store_is_named_at_the_stage_and_at_flush(fault, empty_store, chattr, tmp_path, monkeypatch,
                                                                  capsys, request):
    """A store on a read-only mount, on a full disk, or in a folder where sqlite cannot create its journal: the stage
    warns in one line with the reason and flush says it in one line and exits 1 (the spool is on another disk)."""
    tmpfs = None if fault == "immutable folder" else request.getfixturevalue("tmpfs")
    folder = tmpfs or tmp_path / "store"
    _, uri = _store(empty_store, folder, monkeypatch)
    monkeypatch.chdir(tmp_path)
    if fault == "read-only file system":
        subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
        with pytest.raises(OSError) as raised:  # the OS's own error for it, as MLflow would meet it
            (tmpfs / "x").write_text("x")
        assert classify(raised.value) == ("cannot be written", f"read-only file system: {tmpfs / 'x'}")
    elif fault == "disk full":
        _fill(tmpfs)
    else:
        chattr("+i", folder)
    reason = f"immutable folder {folder}" if fault == "immutable folder" else fault
    t0 = time.time()
    assert log_stage_run(StageRun("prepare", metrics={"x": 1.0})) is not None
    assert time.time() - t0 < 2
    assert f"prepare not logged yet: cannot be written ({reason}); queued in" in _stage_warning(capsys)
    proc = _flush_command(tmp_path, uri)
    assert proc.returncode == 1 and proc.stderr.splitlines() == [
        f"error: MLflow store {uri} cannot be written ({reason}): 1 run not logged, still queued in {spool_dir()}"]


def test_the_reasons_of_real_failures(tmp_path):
    """What sqlite, the OS and sockets really raise, classified: the words each failure line carries."""
    def raised(action) -> tuple[str, str]:
        with pytest.raises(Exception) as e:
            action()
        return classify(e.value)

    db = tmp_path / "s.db"
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("CREATE TABLE t (x)")
    ro = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    assert raised(lambda: ro.execute("INSERT INTO t VALUES (1)")) == ("cannot be written", "read-only file")
    other = sqlite3.connect(db, isolation_level=None, timeout=0)
    con.execute("BEGIN EXCLUSIVE")  # another writer
    assert raised(lambda: other.execute("SELECT * FROM t")) == ("cannot be written", "locked by another process")
    con.execute("ROLLBACK")
    small = sqlite3.connect(tmp_path / "small.db")
    small.execute("PRAGMA max_page_count = 4")  # sqlite's own limit: the same error as a full disk
    assert raised(lambda: small.execute("CREATE TABLE b AS SELECT zeroblob(100000) AS x")) == (
        "cannot be written", "disk full")
    (tmp_path / "junk.db").write_bytes(bytes(range(256)) * 20)
    assert raised(lambda: sqlite3.connect(tmp_path / "junk.db").execute("SELECT * FROM sqlite_master")) == (
        "cannot be read", "not a database")
    assert raised(lambda: sqlite3.connect(f"file:{tmp_path / 'no' / 'x.db'}?mode=rw", uri=True)) == (
        "cannot be opened", "unable to open the database file")

    def write_to_full_device():
        with open("/dev/full", "w") as f:
            f.write("x")
    if Path("/dev/full").exists():
        assert raised(write_to_full_device) == ("cannot be written", "disk full")
    assert raised(lambda: socket.create_connection(("127.0.0.1", _free_port()), timeout=2)) == (
        "cannot be reached", "connection refused")
    with socket.socket() as srv:  # a server that accepts and never answers
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        with socket.create_connection(srv.getsockname(), timeout=0.05) as c:
            assert raised(lambda: c.recv(1)) == ("cannot be reached", "no answer in time")

    def unknown():
        raise ValueError("bad value\nmore")
    assert raised(unknown) == ("failed", "ValueError: bad value")


def test_half_written_entries_of_dead_writers_are_removed_by_flush(tmp_path, monkeypatch, capsys):
    """A spool folder without its record can never be logged once its writer is dead (killed, or its disk filled):
    flush removes it with a one-line warning. A live writer's folder is left to be finished."""
    monkeypatch.chdir(tmp_path)
    writer = subprocess.Popen(["true"])
    writer.wait()  # exited and reaped: its pid names no process
    dead_pid = writer.pid
    spool = spool_dir()
    dead = spool / f"{int(time.time() * 1000):015d}-{dead_pid}-train_ddpm"
    live = spool / f"{int(time.time() * 1000):015d}-{os.getpid()}-sample_ddpm-4"
    for entry in (dead, live):
        (entry / "0").mkdir(parents=True)
        (entry / "0" / "curve.csv").write_text("step,loss\n")  # an artifact copied, the record never written
    assert flush() == []
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"warning: {dead}: half-written MLflow run removed (no record.json; its writer, pid {dead_pid}, "
                   "has exited)"]
    assert not dead.exists() and live.is_dir()


def test_a_run_that_cannot_be_queued_leaves_nothing_half_written(tmpfs, tmp_path, monkeypatch, capsys):
    """The disk fills while a stage copies its files into the spool: one warning line that says so, and no folder
    left behind (the stage's outputs are written all the same)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    big = tmp_path / "samples.npz"
    big.write_bytes(os.urandom(6 << 20))  # more than the 4 MiB file system holds
    assert log_stage_run(StageRun("sample@ddpm-4", artifacts=[big]), root=tmpfs) is None
    assert _stage_warning(capsys) == "warning: MLflow run of sample@ddpm-4 not queued in .mlflow-spool/: disk full"
    assert list((tmpfs / ".mlflow-spool").iterdir()) == []
