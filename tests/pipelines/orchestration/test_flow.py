"""Prefect runs the DVC DAG: a real `prefect server` on 127.0.0.1, the deployment served or on a process worker,
a real DVC repository and MLflow store. One Prefect server serves the whole module (each test deploys its own
repository to it); deployments and workers are stopped by PID at the end of each test."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml

from conftest import SMALL_SWEEPS, TINY, run, write_params
from servers import free_port, prefect_env, start, stop

pytestmark = pytest.mark.e2e

DEPLOYMENT = "diffusion/full-sweep"


@pytest.fixture
def served(prefect_server, tiny_repo, tmp_path):
    """`python -m pipelines.orchestration.flow serve` started in a folder of its own, not the repository: deployment
    diffusion/full-sweep, ready to run; runs name the repository in their `repo` parameter (deployment_run)."""
    elsewhere = tmp_path / "served-from"
    elsewhere.mkdir()
    proc = start(["python", "-m", "pipelines.orchestration.flow", "serve"], elsewhere, tmp_path / "serve.log", **prefect_server)
    try:
        deadline = time.time() + 60
        while run(["prefect", "deployment", "inspect", DEPLOYMENT], tiny_repo, check=False,
                  **prefect_server).returncode != 0:
            assert proc.poll() is None and time.time() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(1)
        yield prefect_server
    finally:
        stop(proc)


def deployment_run(repo: Path, env: dict[str, str], check: bool = True, **params) -> subprocess.CompletedProcess:
    cmd = ["prefect", "deployment", "run", DEPLOYMENT, "--watch", "--watch-timeout", "800"]
    cmd += ["--params", json.dumps({"repo": str(repo), **params})]
    return run(cmd, repo, check=check, **env)


def sweep_runs(repo: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The MLflow store's sweep (parent) runs, oldest first, and its stage runs."""
    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["trilemma"], order_by=["start_time ASC"])
    nested = runs.get("tags.mlflow.parentRunId", pd.Series(None, index=runs.index, dtype=object)).notna()
    return runs[~nested].reset_index(drop=True), runs[nested].reset_index(drop=True)


def table_of(repo: Path, run_id: str, name: str) -> pd.DataFrame:
    client = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    path = client.download_artifacts(run_id, name, str(repo / f"dl-{run_id}"))
    return pd.read_json(path, orient="split")


def all_stages(repo: Path) -> set[str]:
    p = yaml.safe_load((repo / "params.yaml").read_text())
    return {"prepare", "evaluator", "reference", "train_ddpm", "finetune_iddpm", "train_sd2015", "train_classifier",
            "table", "claims",
            *(f"sample@{c}" for c in p["sweep"]), *(f"sample_guided@{c}" for c in p["guided_sweep"]),
            *(f"sample_exact@{c}" for c in p["exact_sweep"]),
            *(f"{s}@{T}" for T in p["ddgan"]["T"] for s in ("train_ddgan", "sample_ddgan"))}


def claim_tags(repo: Path, run_id: str) -> dict[str, str]:
    """A run's tags `claim.<id>`: each paper claim's status."""
    tags = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}").get_run(run_id).data.tags
    return {k: v for k, v in tags.items() if k.startswith("claim.")}


def flow_run_id(proc: subprocess.CompletedProcess) -> str:
    """The flow run that `prefect deployment run` created."""
    return re.search(r"UUID: ([0-9a-f-]{36})", proc.stdout).group(1)


@contextmanager
def prefect_client(env: dict[str, str]):
    """Prefect's API client, in this process, for the test's server."""
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}), get_client(sync_client=True) as client:
        yield client


def assert_each_task_runs_only_while_its_stage_does(env: dict[str, str], flow_run: str, report: pd.DataFrame,
                                                    tolerance: float = 1.0) -> dict[str, float]:
    """Every stage that ran has a task run, which went Running when the stage started (`started`, measured in the
    task just before `dvc repro`), not when the stage began to wait for its slots: Prefect's timeline draws the
    stage's run, not its wait. Returns each task's Running start minus the stage's start, in seconds."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with prefect_client(env) as client:
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run])))
    ran = report[report["status"].isin(["ran", "restored"])]
    starts = {t.name: t.start_time.timestamp() for t in task_runs if t.name in ran.index}
    assert set(starts) == set(ran.index), sorted(set(ran.index) - set(starts))
    lead = {s: round(start - ran.loc[s, "started"], 3) for s, start in starts.items()}
    assert all(d >= -tolerance for d in lead.values()), {s: d for s, d in lead.items() if d < -tolerance}
    return lead


def test_full_sweep_through_the_served_deployment(served, tiny_repo, tmp_path):
    """Two slots of each kind: the whole DAG (one cell of each kind) with two stages at a time, DVC committing them
    side by side, served from another folder than the repository it runs."""
    write_params(tiny_repo, TINY, SMALL_SWEEPS)
    (tiny_repo / "dvc.lock").unlink()  # the full-size run's
    stages = all_stages(tiny_repo)
    t0 = time.time()
    cold = deployment_run(tiny_repo, served, gpu_slots=2, cpu_slots=2)
    cold_s = time.time() - t0
    assert "Completed" in cold.stdout, cold.stdout

    parents, nested = sweep_runs(tiny_repo)
    assert len(parents) == 1 and parents.loc[0, "status"] == "FINISHED"
    parent = parents.loc[0, "run_id"]
    assert sorted(nested["tags.mlflow.runName"]) == sorted(stages)  # every stage ran, once, nested in the sweep
    assert (nested["tags.mlflow.parentRunId"] == parent).all() and (nested["status"] == "FINISHED").all()
    report = table_of(tiny_repo, parent, "stages.json").set_index("stage")
    # the validate stage runs first and logs no MLflow run: it checks params.yaml and computes nothing
    assert set(report.index) == stages | {"validate"} and (report["status"] == "ran").all()
    assert (report["attempts"] == 1).all()
    assert "up to date" in run(["dvc", "status"], tiny_repo).stdout

    # The parent run holds the trilemma table, from DVC's metrics and plots files.
    table = pd.read_csv(tiny_repo / "metrics/trilemma.csv").set_index("cell")
    logged = table_of(tiny_repo, parent, "trilemma.json").set_index("cell")
    assert list(logged.index) == list(table.index)
    assert parents.loc[0, "metrics.ddpm-4.hq_fraction"] == pytest.approx(table.loc["ddpm-4", "hq_fraction"])
    client = mlflow.MlflowClient(f"sqlite:///{tiny_repo / 'mlflow.db'}")
    assert {"trilemma.md", "trilemma.png", "guidance.png"} <= {a.path for a in client.list_artifacts(parent)}
    # every run's artifacts stay in the repository's store, not in the serving process's working directory
    assert (nested["artifact_uri"].str.startswith((tiny_repo / "mlruns").as_uri())).all()
    assert client.get_run(parent).info.artifact_uri.startswith((tiny_repo / "mlruns").as_uri())
    assert not (tmp_path / "served-from" / "mlruns").exists()
    # each stage's run spans the stage's process, not the moment it was logged: train_ddpm's run holds its training
    # loop (train_s, timed inside it) and lies within the flow's interval for the stage (which adds DVC's own work)
    ddpm = nested.set_index("tags.mlflow.runName").loc["train_ddpm"]
    lasted = (ddpm["end_time"] - ddpm["start_time"]).total_seconds()
    assert lasted >= ddpm["metrics.train_s"] - 0.01  # ms truncation of start and end
    assert report.loc["train_ddpm", "started"] - 1 <= ddpm["start_time"].timestamp()
    assert ddpm["end_time"].timestamp() <= report.loc["train_ddpm", "ended"] + 1

    # The sweep's run holds the papers' claims: one tag per claim the claims stage wrote, the counts, its files.
    claims = json.loads((tiny_repo / "metrics/claims.json").read_text())
    per_claim = {f"claim.{p.stem}": json.loads(p.read_text())["status"]
                 for p in (tiny_repo / "metrics/claims").glob("*.json")}
    assert per_claim and claim_tags(tiny_repo, parent) == per_claim
    assert parents.loc[0, "metrics.claims.holds"] == claims["summary"]["holds"]
    assert parents.loc[0, "metrics.claims.not_measured"] == claims["summary"]["not measured"]
    assert {"claims.md", "claims.json"} <= {a.path for a in client.list_artifacts(parent)}
    # the experiment opens on MLflow's runs, not its GenAI overview
    assert client.get_experiment_by_name("trilemma").tags["mlflow.experimentKind"] == "custom_model_development"

    # The flow run shows the table and the claims as markdown artifacts, from the stages' own files.
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with prefect_client(served) as prefect:
        artifacts = prefect.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id(cold)])))
    by_key = {a.key: a for a in artifacts}
    assert by_key["trilemma-table"].data == (tiny_repo / "metrics/trilemma.md").read_text()
    assert by_key["paper-claims"].data == (tiny_repo / "metrics/claims.md").read_text()
    assert all(by_key[k].type == "markdown" and by_key[k].description for k in ("trilemma-table", "paper-claims"))
    assert f"{claims['summary']['holds']} of {claims['summary']['total']} hold" in by_key["paper-claims"].description

    # With two slots of each kind, stages queued for their slots; their task runs started when they did.
    lead = assert_each_task_runs_only_while_its_stage_does(served, flow_run_id(cold), report)
    print(f"\nslot waits {report['slot_wait_s'].sum():.1f} s over {len(lead)} stages; Running start minus stage "
          f"start {min(lead.values()):.3f} to {max(lead.values()):.3f} s")

    # A second run recomputes nothing: no stage runs, no stage run is logged, and the table is logged again.
    t0 = time.time()
    noop = deployment_run(tiny_repo, served)
    noop_s = time.time() - t0
    assert "Completed" in noop.stdout, noop.stdout
    parents, again = sweep_runs(tiny_repo)
    assert len(parents) == 2 and len(again) == len(nested)
    second = parents.loc[1, "run_id"]
    assert (table_of(tiny_repo, second, "stages.json")["status"] == "up to date").all()
    assert list(table_of(tiny_repo, second, "trilemma.json")["cell"]) == list(table.index)
    assert claim_tags(tiny_repo, second) == per_claim  # the claims too, from the up-to-date stage's files
    print(f"\ncold sweep {cold_s:.1f} s, no-op sweep {noop_s:.1f} s (prefect deployment run --watch)")


def test_gpu_slots_decide_whether_independent_stages_overlap(served, tiny_repo):
    """train_ddpm and train_classifier both need only `prepare`; meta {gpu: 1} makes them take a GPU slot each."""
    def training_intervals(**params):
        proc = deployment_run(tiny_repo, served, targets=["train_ddpm", "train_classifier"], **params)
        parents, _ = sweep_runs(tiny_repo)
        report = table_of(tiny_repo, parents["run_id"].iloc[-1], "stages.json").set_index("stage")
        assert (report.loc[["train_ddpm", "train_classifier"], "status"] == "ran").all()
        assert_each_task_runs_only_while_its_stage_does(served, flow_run_id(proc), report)
        return [tuple(report.loc[s, ["started", "ended", "slot_wait_s"]]) for s in ("train_ddpm", "train_classifier")]

    # On this CPU host, GPU stages hold a CPU slot too: cpu_slots=2 leaves the GPU limit as the one that binds.
    (a0, a1, _), (b0, b1, _) = training_intervals(gpu_slots=2, cpu_slots=2)
    assert max(a0, b0) < min(a1, b1), "two slots: the trainings should overlap"

    params = yaml.safe_load((tiny_repo / "params.yaml").read_text())
    params["train_ddpm"]["steps"] = params["train_classifier"]["steps"] = 20
    (tiny_repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (a0, a1, a_wait), (b0, b1, b_wait) = training_intervals(gpu_slots=1, cpu_slots=2)
    assert a1 <= b0 or b1 <= a0, "one slot: the trainings should run one after the other"
    # the second waited for the first's slot, all of its run, and its task run started only then (checked above)
    assert (b_wait if a1 <= b0 else a_wait) >= (a1 - a0 if a1 <= b0 else b1 - b0) - 1


def test_failing_stage_is_retried_then_fails_the_flow_on_a_worker(prefect_server, tiny_repo, tmp_path):
    """The prefect.yaml path: work pool, `deploy --all`, a process worker. A rerun resumes from DVC's state."""
    dvc_yaml = tiny_repo / "dvc.yaml"
    original = dvc_yaml.read_text()
    crash = ("python -c \"open('attempts.log', 'a').write('attempt\\n'); "
             "raise SystemExit('injected crash in train_classifier')\" && ")
    dvc = yaml.safe_load(original)
    dvc["stages"]["train_classifier"]["cmd"] = crash + dvc["stages"]["train_classifier"]["cmd"]
    dvc_yaml.write_text(yaml.safe_dump(dvc, sort_keys=False))
    env = prefect_server
    run(["prefect", "work-pool", "create", "gpu-pool", "--type", "process"], tiny_repo, **env)
    run(["prefect", "--no-prompt", "deploy", "--all"], tiny_repo, **env)
    worker = start(["prefect", "worker", "start", "--pool", "gpu-pool"], tiny_repo, tmp_path / "worker.log", **env)
    try:
        failed = deployment_run(tiny_repo, env, check=False, targets=["train_classifier"], retries=1)
        assert failed.returncode != 0 and "Failed" in failed.stdout, failed.stdout
        assert (tiny_repo / "attempts.log").read_text().count("attempt") == 2  # the first try and one retry
        logs = run(["prefect", "flow-run", "logs", flow_run_id(failed)], tiny_repo, **env).stdout
        assert "stage train_classifier failed: injected crash in train_classifier (dvc repro exited 255)" in logs
        parents, nested = sweep_runs(tiny_repo)
        assert parents["status"].tolist() == ["FAILED"] and nested["tags.mlflow.runName"].tolist() == ["prepare"]

        # Fixed, the deployment resumes: prepare is up to date and only train_classifier runs.
        dvc_yaml.write_text(original)
        fixed = deployment_run(tiny_repo, env, targets=["train_classifier"], retries=1)
        assert "Completed" in fixed.stdout, fixed.stdout
        parents, nested = sweep_runs(tiny_repo)
        report = table_of(tiny_repo, parents["run_id"].iloc[-1], "stages.json").set_index("stage")
        assert report["status"].to_dict() == {"validate": "up to date", "prepare": "up to date",
                                              "train_classifier": "ran"}
        assert sorted(nested["tags.mlflow.runName"]) == ["prepare", "train_classifier"]
    finally:
        stop(worker, signals=(signal.SIGTERM, signal.SIGINT))


def test_a_shared_dvc_remote_lets_another_checkout_restore_instead_of_recompute(prefect_server, tiny_repo, tmp_path):
    """The scale-out path: two hosts' checkouts share a DVC remote; the second restores what the first ran."""
    run(["dvc", "remote", "add", "-d", "shared", str(tmp_path / "remote")], tiny_repo)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "a shared remote"], tiny_repo)
    other = tmp_path / "other-host"
    run(["git", "clone", "-q", str(tiny_repo), str(other)], tmp_path)
    sweep = "from pipelines.orchestration.flow_sweep import diffusion; diffusion(targets=['train_classifier'], share_cache=True)"
    run(["python", "-c", sweep], tiny_repo, **prefect_server)
    run(["python", "-c", sweep], other, **prefect_server)

    parents, nested = sweep_runs(other)
    report = table_of(other, parents["run_id"].iloc[-1], "stages.json").set_index("stage")
    assert report["status"].to_dict() == {"validate": "restored", "prepare": "restored", "train_classifier": "restored"}
    assert nested.empty  # no stage command ran on the second host
    assert (other / "models/classifier.pt").read_bytes() == (tiny_repo / "models/classifier.pt").read_bytes()
    assert "up to date" in run(["dvc", "status", "train_classifier"], other).stdout


def test_mlflow_down_warns_and_the_sweep_completes(prefect_server, tiny_repo):
    dead = f"http://127.0.0.1:{free_port()}"
    t0 = time.time()
    proc = run(["python", "-c", "from pipelines.orchestration.flow_sweep import diffusion; print('table', diffusion(targets=['prepare']))"],
               tiny_repo, MLFLOW_TRACKING_URI=dead, **prefect_server)
    assert time.time() - t0 < 120
    assert f"MLflow at {dead} unreachable: the sweep runs untracked" in proc.stderr
    assert "warning: MLflow tracking at" in proc.stderr  # the stage's own warning, streamed into the flow's log
    assert "Finished in state Completed" in proc.stderr and (tiny_repo / "data/train.npz").exists()
    assert "up to date" in run(["dvc", "status", "prepare"], tiny_repo).stdout


def test_unreachable_prefect_server_fails_within_seconds(tiny_repo, tmp_path):
    env = prefect_env(tmp_path, free_port())
    t0 = time.time()
    serve = run(["python", "-m", "pipelines.orchestration.flow", "serve", "--wait", "2"], tiny_repo, check=False, **env)
    assert time.time() - t0 < 20 and serve.returncode == 2
    (line,) = serve.stderr.strip().splitlines()  # httpx words the refusal in more than one way
    assert line.startswith(f"error: Prefect server at {env['PREFECT_API_URL']} is unreachable (ConnectError: ")
    assert line.endswith("); start it with `prefect server start`")
    t0 = time.time()
    trigger = run(["prefect", "deployment", "run", DEPLOYMENT], tiny_repo, check=False, **env)
    assert time.time() - t0 < 20 and trigger.returncode != 0
    assert "httpx.ConnectError" in trigger.stdout + trigger.stderr


def test_hostile_targets_run_nothing_through_the_flow(prefect_server, tiny_repo, tmp_path):
    """A stage name that would run shell code, as the flow's target: refused in one line before any stage runs, both
    when params.yaml does not declare it (no such stage) and when it does (params validation), and no shell sees it."""
    marker = tmp_path / "injected"
    targets = [f"sample@x$(touch {marker}-0)", f"sample@x`touch {marker}-1`"]
    params = yaml.safe_load((tiny_repo / "params.yaml").read_text())
    params["sweep"][targets[1].removeprefix("sample@")] = dict(params["sweep"]["ddim-4"])
    runs = [(targets[0], None), (targets[1], yaml.safe_dump(params, sort_keys=False))]  # the second declares it
    code = ("import json, sys\nfrom pipelines.orchestration.flow_sweep import diffusion\nfor t, params in json.loads(sys.argv[1]):\n"
            "    if params:\n        open('params.yaml', 'w').write(params)\n"
            "    try:\n        diffusion(targets=[t])\n    except Exception as e:\n"
            "        print('refused:', type(e).__name__, str(e).splitlines()[0])")
    lock = (tiny_repo / "dvc.lock").read_bytes()
    proc = run(["python", "-c", code, json.dumps(runs)], tiny_repo, **prefect_server)
    refused = [line for line in proc.stdout.splitlines() if line.startswith("refused:")]
    assert len(refused) == 2, proc.stdout + proc.stderr
    assert refused[0].startswith("refused: SweepError targets: no stage 'sample@x$(touch ")
    assert refused[1].startswith("refused: ParamsError ") and "cell name 'x`touch " in refused[1]
    assert "Running stage" not in proc.stdout + proc.stderr and not list(tmp_path.glob("injected*"))
    assert (tiny_repo / "dvc.lock").read_bytes() == lock and not (tiny_repo / "data/train.npz").exists()
