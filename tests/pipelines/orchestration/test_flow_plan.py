"""The flow's planning, without a Prefect server: the stage graph from a real DVC repo, slots, devices, errors."""

import threading
import time

import pytest
import yaml

from pipelines.orchestration.flow_plan import SweepError, read_plan, stage_slots, visible_gpus
from pipelines.orchestration.flow_dvc import stage_error
from pipelines.orchestration.flow_stages import Slots

from conftest import run


def test_plan_follows_dvc_yaml_and_dvc_status(tiny_repo):
    plan = {s.name: s for s in read_plan(tiny_repo, None, on_gpu_host=False)}
    order = list(plan)
    assert order[:2] == ["validate", "prepare"] and order[-2:] == ["table", "claims"]
    assert all(order.index(u) < order.index(name) for name, s in plan.items() for u in s.upstream)
    assert set(plan["sample_guided@ddim-50-s1"].upstream) == {"train_ddpm", "train_classifier", "prepare", "reference"}
    assert set(plan["claims"].upstream) == {"table"}  # the claims read the table only
    # GPU stages hold a CPU slot on a host without a GPU; sample_exact is CPU-bound; prepare holds nothing.
    assert plan["train_ddpm"].slots == {"gpu": 1, "cpu": 1} and plan["sample_exact@exact-ddim-4"].slots == {"cpu": 1}
    assert plan["prepare"].slots == {} and plan["table"].table and not plan["prepare"].table
    assert read_plan(tiny_repo, ["train_ddpm"], on_gpu_host=True)[2].slots == {"gpu": 1}
    assert all(s.stale for s in plan.values())  # nothing built yet

    run(["dvc", "repro", "prepare"], tiny_repo)
    plan = {s.name: s for s in read_plan(tiny_repo, ["train_classifier"], on_gpu_host=False)}
    assert list(plan) == ["validate", "prepare", "train_classifier"]
    assert not plan["prepare"].stale and plan["train_classifier"].stale and not plan["train_classifier"].after_stale

    # A new data param makes prepare stale; train_classifier's own deps are unchanged until prepare reruns.
    run(["dvc", "repro", "train_classifier"], tiny_repo)
    params = yaml.safe_load((tiny_repo / "params.yaml").read_text())
    params["data"]["n_train"] += 100
    (tiny_repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    plan = {s.name: s for s in read_plan(tiny_repo, ["train_classifier"], on_gpu_host=False)}
    assert plan["prepare"].stale and not plan["train_classifier"].stale and plan["train_classifier"].after_stale

    # Any params edit reruns the validate stage, whose stamp never changes: it makes nothing after it stale.
    run(["dvc", "repro", "train_classifier"], tiny_repo)
    params["train_classifier"]["steps"] += 10
    (tiny_repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    plan = {s.name: s for s in read_plan(tiny_repo, ["train_classifier"], on_gpu_host=False)}
    assert plan["validate"].stale and not plan["prepare"].stale and not plan["prepare"].after_stale
    assert plan["train_classifier"].stale and not plan["train_classifier"].after_stale


def test_unknown_target_names_the_stage(tiny_repo):
    with pytest.raises(SweepError, match=r"^targets: no stage 'train_dpm' in dvc.yaml \(stages: validate, prepare, "):
        read_plan(tiny_repo, ["train_dpm"], on_gpu_host=False)


@pytest.mark.parametrize("meta, error", [({"gpu": 0}, "meta.gpu must be a positive integer, got 0"),
                                         ({"cpu": "1"}, "meta.cpu must be a positive integer, got '1'"),
                                         ({"gpu": True}, "meta.gpu must be a positive integer, got True")])
def test_bad_meta_is_one_line(meta, error):
    with pytest.raises(SweepError, match=f"^dvc.yaml: stage s: {error}$"):
        stage_slots("s", meta, on_gpu_host=True)


def test_slots_go_to_the_earliest_waiting_stage_that_fits():
    slots = Slots({"gpu": 1, "cpu": 1}, gpus=["0"])
    held = slots.take(0, {"gpu": 1, "cpu": 1})
    assert held == ["0"]
    order = []

    def wait(rank, need):
        ids = slots.take(rank, need)
        order.append(rank)
        time.sleep(0.05)
        slots.give(need, ids)

    threads = [threading.Thread(target=wait, args=(rank, need))
               for rank, need in ((7, {"cpu": 1}), (3, {"gpu": 1, "cpu": 1}), (5, {"cpu": 1}))]
    for t in threads:
        t.start()
        time.sleep(0.05)  # all three queue while rank 0 holds everything
    slots.give({"gpu": 1, "cpu": 1}, held)
    for t in threads:
        t.join(timeout=10)
    assert order == [3, 5, 7]
    assert slots.free == {"gpu": 1, "cpu": 1} and slots.load == {"0": 0}


def test_gpus_are_lent_least_loaded_first():
    slots = Slots({"gpu": 4, "cpu": 1}, gpus=["0", "1"])
    assert slots.take(0, {"gpu": 1}) == ["0"]
    assert slots.take(1, {"gpu": 1}) == ["1"]
    assert sorted(slots.take(2, {"gpu": 2})) == ["0", "1"]  # more slots than GPUs: they share


def test_visible_gpus_from_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2, 3")
    assert visible_gpus() == ["2", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert visible_gpus() == []


def test_stage_error_is_the_stages_own_line():
    lines = ["Running stage 'x':", "Traceback (most recent call last):", "ValueError: bad",
             "ERROR: failed to reproduce 'x': failed to run: python -m x, exited with 1"]
    assert stage_error(lines) == "ValueError: bad"


def test_a_torchrun_stage_holds_a_gpu_slot_per_rank_on_a_gpu_host_and_one_cpu_slot_without():
    meta = {"gpu": 1, "torchrun": True}
    assert stage_slots("train_ddpm", meta, on_gpu_host=True, processes=4) == {"gpu": 4}
    assert stage_slots("train_ddpm", meta, on_gpu_host=False, processes=4) == {"gpu": 1, "cpu": 1}
    assert stage_slots("sample@ddim-4", {"gpu": 1}, on_gpu_host=True, processes=4) == {"gpu": 1}  # not a torchrun stage
    assert stage_slots("train_ddpm", meta, on_gpu_host=True) == {"gpu": 1}  # processes 1: today's slots
