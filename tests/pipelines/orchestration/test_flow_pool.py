"""The spread sweep's pieces that need no server: the checkout fingerprint hosts must share, the tracking check."""

from __future__ import annotations

import pytest

from pipelines.orchestration.flow_plan import SweepError
from pipelines.orchestration.flow_pool import check_served_artifacts, check_tracking, checkout_fingerprint

from conftest import run

GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]


def test_the_fingerprint_follows_commit_and_edits_but_not_what_dvc_writes(tmp_path):
    run(["git", "init", "-q"], tmp_path)
    files = {"params.yaml": "a: 1\n", "dvc.lock": "{}\n", ".gitignore": "/x\n", "data/.gitignore": "/y\n"}
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    run([*GIT, "add", "-A"], tmp_path)
    run([*GIT, "commit", "-qm", "one"], tmp_path)
    clean = checkout_fingerprint(tmp_path)

    (tmp_path / "dvc.lock").write_text("{stages: {}}\n")  # DVC's own writes as stages run: the same computation
    (tmp_path / ".gitignore").write_text("/x\n/z\n")
    (tmp_path / "data/.gitignore").write_text("/y\n/w\n")
    assert checkout_fingerprint(tmp_path) == clean

    (tmp_path / "params.yaml").write_text("a: 2\n")  # another computation
    edited = checkout_fingerprint(tmp_path)
    assert edited != clean
    run([*GIT, "commit", "-qam", "two"], tmp_path)
    assert checkout_fingerprint(tmp_path) not in (clean, edited)  # the same edit, committed: another commit


def test_a_folder_outside_git_has_no_fingerprint(tmp_path):
    with pytest.raises(SweepError, match="not a git checkout"):
        checkout_fingerprint(tmp_path)


@pytest.mark.parametrize("uri", ["sqlite:////tmp/mlflow.db", "file:///tmp/mlruns", "/tmp/mlruns"])
def test_spread_needs_an_mlflow_server(uri):
    with pytest.raises(SweepError, match="only this host can write"):
        check_tracking(uri)
    check_tracking("http://127.0.0.1:5000")


@pytest.mark.parametrize("location", ["file:///srv/repo/mlruns/1/abc/artifacts", "/srv/repo/mlruns/1/abc/artifacts"])
def test_spread_refuses_an_experiment_whose_files_go_to_a_folder(location):
    with pytest.raises(SweepError, match="a folder that each host"):
        check_served_artifacts(location)


@pytest.mark.parametrize("location", ["mlflow-artifacts:/1/abc/artifacts", "s3://bucket/mlflow/1/abc/artifacts"])
def test_spread_takes_files_sent_through_the_server_or_to_shared_storage(location):
    check_served_artifacts(location)
