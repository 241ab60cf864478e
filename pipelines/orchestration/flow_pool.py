"""A sweep spread over a work pool: each stage a run of deployment `diffusion-stage/stage` on whichever worker is free.

    prefect deployment run diffusion/full-sweep --params '{"spread": true}'

The parent flow (`diffusion`, pipelines/orchestration/flow_sweep.py) still reads dvc.yaml as the one DAG and still
sends independent stages at the same time; with `spread` it `send`s each stage to the pool instead of running it.
A worker runs `stage_on_host` in its own checkout (prefect.yaml's pull step: TRILEMMA_CHECKOUT). Hosts share
nothing but three servers:

- **the DVC remote**: `dvc repro --pull <stage>` restores every upstream stage from the remote's run-cache (the host
  that ran it pushed it) and runs the stage itself; `dvc push --run-cache` then publishes its outputs and its run for
  the next stage's host, and for the parent, which restores the whole sweep at the end;
- **the MLflow server**: the stage's run nests under the sweep's (MLFLOW_TRACKING_URI, TRILEMMA_PARENT_RUN_ID), its
  files sent through the server (`mlflow server --artifacts-destination`), not written into anyone's folder;
- **the Prefect server**: a stage run sends a heartbeat every HEARTBEAT_S seconds. A host that dies goes silent, an
  automation (`watch_hosts`) marks its run Crashed after `host_timeout_s`, and the parent's task retries the stage,
  which another worker takes.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path

from prefect import flow, get_client, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.automations import Automation
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prefect.client.schemas.objects import StateType
from prefect.deployments import run_deployment
from prefect.events.actions import ChangeFlowRunState
from prefect.events.schemas.automations import EventTrigger, Posture

from pipelines.orchestration.flow_dvc import dvc_command, push_cache, stage_environment, stage_error, stream
from pipelines.orchestration.flow_plan import SweepError
from pipelines.plumbing.tracking import flush

STAGE_FLOW, STAGE_DEPLOYMENT = "diffusion-stage", "stage"  # prefect.yaml's deployment of `stage_on_host`
HEARTBEAT_S = 30  # a stage run's heartbeat (PREFECT_FLOWS_HEARTBEAT_FREQUENCY; Prefect allows no less)
AUTOMATION = "trilemma: crash stage runs whose host went silent"
CHECKOUT_ENV = "TRILEMMA_CHECKOUT"  # a worker's checkout, where prefect.yaml's pull step puts its stage runs


@dataclass(frozen=True)
class Pool:
    """What the parent hands every stage run: the checkout it must match, and where the stage's MLflow run goes."""

    fingerprint: str          # `checkout_fingerprint` of the parent's checkout
    tracking_uri: str         # an MLflow server every host reaches
    experiment: str
    parent_run: str | None    # the sweep's MLflow run


# what DVC itself writes into tracked files as stages run: the lock, and the outputs it adds to .gitignore files
DVC_WRITES = (":(exclude)dvc.lock", ":(exclude,glob)**/.gitignore")


def checkout_fingerprint(root: Path) -> str:
    """The checkout's commit and its uncommitted changes to tracked files (but DVC's own), hashed: hosts whose
    fingerprints match compute the same stages (DVC's run-cache keys agree), so one's outputs are the other's."""
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
    if head.returncode != 0:
        raise SweepError(f"spread: {root} is not a git checkout ({head.stderr.strip()[:200]}); every host needs "
                         "a checkout of the same commit")
    diff = subprocess.run(["git", "diff", "HEAD", "--binary", "--", ".", *DVC_WRITES], cwd=root,
                          capture_output=True).stdout
    return f"{head.stdout.strip()[:12]}+{hashlib.sha1(diff).hexdigest()[:12]}"


def watch_hosts(silence_s: int) -> None:
    """Create or update the automation that marks a stage run (a flow run of STAGE_FLOW) Crashed once it has sent no
    heartbeat for `silence_s` seconds: Prefect's recipe for a process that died with its host, kept to the runs whose
    heartbeat `send` sets to HEARTBEAT_S (other flow runs beat every 180 s by default, and must not be touched)."""
    if silence_s < 2 * HEARTBEAT_S:
        raise SweepError(f"host_timeout_s: must be at least {2 * HEARTBEAT_S} (two of a stage run's "
                         f"{HEARTBEAT_S} s heartbeats), got {silence_s}")
    ended = {f"prefect.flow-run.{s}" for s in ("Completed", "Failed", "Cancelled", "Crashed")}
    trigger = EventTrigger(after={"prefect.flow-run.heartbeat"}, expect={"prefect.flow-run.heartbeat", *ended},
                           match={"prefect.resource.id": ["prefect.flow-run.*"]},
                           match_related={"prefect.resource.role": "flow", "prefect.resource.name": STAGE_FLOW},
                           for_each={"prefect.resource.id"},
                           posture=Posture.Proactive, threshold=1, within=timedelta(seconds=silence_s))
    action = ChangeFlowRunState(state=StateType.CRASHED, message=f"no heartbeat for {silence_s} s: its host died")
    try:
        old = Automation.read(name=AUTOMATION)
    except ValueError:  # none of that name yet
        old = None
    if old is None:
        Automation(name=AUTOMATION, trigger=trigger, actions=[action]).create()
    else:  # this sweep's host_timeout_s, and the trigger as this version of the code writes it
        old.trigger, old.actions = trigger, [action]
        old.update()


def send(stage: str, pool: Pool) -> dict:
    """Run `stage` on the work pool and wait for it; its host's report row. SweepError where the run did not complete
    (failed, or crashed with its host), which the calling task's retries answer by sending it again."""
    started = time.time()
    run = run_deployment(f"{STAGE_FLOW}/{STAGE_DEPLOYMENT}", parameters={"stage": stage, **asdict(pool)},
                         flow_run_name=stage, timeout=None, poll_interval=1,
                         job_variables={"env": {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_S)}})
    if run.state is None or not run.state.is_completed():
        what = run.state.type.value.lower() if run.state else "lost"
        raise SweepError(f"stage {stage} {what} on the pool (flow run {run.name}): "
                         f"{(run.state.message if run.state else '') or 'no message'}")
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(
            any_=[run.id])))
    rows = [row for a in found for row in (json.loads(a.data) if isinstance(a.data, str) else a.data or [])]
    row = next((r for r in rows if r.get("stage") == stage), {"stage": stage, "status": "completed (no report)"})
    return {**row, "flow_run": run.name, "slot_wait_s": round(row.get("started", started) - started, 3)}


@flow(name=STAGE_FLOW, validate_parameters=True)
def stage_on_host(stage: str, fingerprint: str, tracking_uri: str, experiment: str,
                  parent_run: str | None = None) -> dict:
    """One stage on this worker's checkout: upstream restored from the DVC remote, the stage run, its outputs and
    run pushed; a report row (also a table artifact of this flow run, which the parent reads)."""
    logger = get_run_logger()
    root = Path.cwd()
    host = f"{socket.gethostname()}:{root}"
    mine = checkout_fingerprint(root)
    if mine != fingerprint:
        raise SweepError(f"{host}: this checkout ({mine}) is not the sweep's ({fingerprint}); check out the sweep's "
                         "commit and params on every host")
    env = stage_environment(tracking_uri, parent_run) | {"MLFLOW_EXPERIMENT_NAME": experiment}
    started = time.time()
    code, lines, did = stream(dvc_command("--wait-for-lock", "repro", "--pull", stage), root, env, logger)
    if code != 0:
        raise SweepError(f"stage {stage} failed on {host}: {stage_error(lines)} (dvc repro exited {code})")
    rebuilt = [s for s, what in did.items() if what == "ran" and s != stage]
    if rebuilt:  # an upstream stage's run was not on the remote: rebuilt here, which costs time, not results
        logger.warning(f"{host}: rebuilt {', '.join(rebuilt)}, whose runs the DVC remote did not have")
    push_cache(root, logger)
    flush(root)  # the stage's MLflow run leaves this host's spool before the parent closes the sweep's run
    ended = time.time()
    row = {"stage": stage, "status": did.get(stage, "up to date"), "host": host, "started": started, "ended": ended,
           "seconds": round(ended - started, 3), "rebuilt": ",".join(rebuilt),
           "gpus": os.environ.get("CUDA_VISIBLE_DEVICES", "")}
    create_table_artifact([row], description=f"stage {stage} on {host}")
    return row


def check_tracking(uri: str) -> None:
    """SweepError unless `uri` is an MLflow server, the one tracking store that every host reaches and that takes
    every host's files through itself."""
    if not uri.startswith(("http://", "https://")):
        raise SweepError(f"spread: MLFLOW_TRACKING_URI is {uri}, which only this host can write; start an MLflow "
                         "server (mlflow server --artifacts-destination ...) and point MLFLOW_TRACKING_URI at it "
                         "(docs/scale-out.md)")


def check_served_artifacts(location: str) -> None:
    """SweepError where the sweep's files would go to a folder (file:, or a bare path) rather than through the server
    or to shared storage: each host would write into a folder of its own, or into one it cannot reach."""
    scheme = location.split(":", 1)[0] if ":" in location else ""
    if scheme in ("", "file"):
        raise SweepError(f"spread: the MLflow experiment keeps its files in {location}, a folder that each host "
                         "would write on its own disk; use an experiment created through a server started with "
                         "--artifacts-destination (a new MLFLOW_EXPERIMENT_NAME), docs/scale-out.md")


def gather(root: Path, targets: list[str] | None, env: dict[str, str], logger) -> None:
    """Restore the sweep's stages into this checkout from the DVC remote's run-cache (`dvc repro --pull`), where the
    table and the claims are then read, logged and published as after a sweep on one host."""
    code, lines, did = stream(dvc_command("--wait-for-lock", "repro", "--pull", *(targets or [])), root, env, logger)
    if code != 0:
        raise SweepError(f"restoring the sweep from the DVC remote: {stage_error(lines)} (dvc repro exited {code})")
    rebuilt = [s for s, what in did.items() if what == "ran"]
    if rebuilt:
        logger.warning(f"rebuilt here, not restored: {', '.join(rebuilt)} (their runs were not on the DVC remote)")
    logger.info(f"restored {sum(what == 'restored' for what in did.values())} stages from the DVC remote")
