"""dvc.yaml declares everything a stage reads, so that `dvc repro` reruns exactly what a change affects.

Checked by running, not by reading the code: one stage of each kind in dvc.yaml (the first instance of a
foreach/matrix stage, as DVC lists them) runs on a copy of the small built checkout (conftest's
`small_run`) under tests/trace_stage.py, which records every params key the stage reads and every
import of a project module (`components.*`, `pipelines.*`). The test fails when a key read is not
covered by the stage's `params:` (a listed `sample` covers `sample.n`; a listed `sweep.ddim-4` covers
`sweep.ddim-4.steps`; a listed `data.name` does not cover `data.seed`), when a project module the stage
imports is not in its `deps:` (PLUMBING aside), or when the stage's own module is not in its deps.
A stage whose deps hold params.yaml itself (`validate`) depends on every key.
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, copy_of, run
from pipelines.orchestration.stage_deps import plumbing

pytestmark = pytest.mark.slow

TRACER = ROOT / "tests" / "trace_stage.py"
PARAMS_FILE = "params.yaml"

# Project modules a stage may import without listing them in deps: pipelines/orchestration/stage_deps.py's PLUMBING, shared code
# that changes no number a stage computes, not followed (the derivation and this check leave out the same files).

DVC_YAML = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
KINDS = list(DVC_YAML)  # validate, prepare, ..., table: one traced stage each


def stages(repo: Path) -> dict[str, dict]:
    """Every stage of the checkout's DAG as DVC resolves it, in DVC's order: address -> argv, file deps, params
    keys (of params.yaml), outs (those DVC deletes before running the stage)."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    out = {}
    with Repo(str(repo)) as r:
        for s in r.index.stages:
            params = [d for d in s.deps if isinstance(d, ParamsDependency)]
            assert all(d.def_path == PARAMS_FILE for d in params), f"{s.name}: params from another file"
            out[s.name] = {
                "argv": shlex.split(s.cmd),
                "deps": [d.def_path for d in s.deps if not isinstance(d, ParamsDependency)],
                "params": [k for d in params for k in (d.params or [])],
                "outs": [o.def_path for o in s.outs if not o.persist],
            }
    return out


def first_of_each_kind(dag: dict[str, dict]) -> dict[str, str]:
    """Kind (dvc.yaml's stage name, the part of the address before '@') -> its first address."""
    first: dict[str, str] = {}
    for address in dag:
        first.setdefault(address.split("@")[0], address)
    return first


def trace(repo: Path, address: str, stage: dict, record: Path) -> dict:
    """Run the stage's command under the tracer as `dvc repro` would (its outputs deleted first, DVC_STAGE and DVC_ROOT
    set); the tracer's record."""
    for out in stage["outs"]:
        path = repo / out
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    argv = stage["argv"]
    assert argv[:2] == ["python", "-m"], f"{address}: cmd is not `python -m <module> ...`: {' '.join(argv)}"
    # One thread: what a stage reads does not depend on it, and torch's spinning threads slow tiny stages tenfold
    # on a busy machine.
    proc = run([sys.executable, str(TRACER), str(record), *argv], repo, check=False, DVC_STAGE=address,
               DVC_ROOT=str(repo), OMP_NUM_THREADS="1")
    assert proc.returncode == 0 and record.is_file(), (
        f"{address} failed under the tracer ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(record.read_text())


def covered(key: str, listed: list[str]) -> bool:
    """A listed entry covers itself and every key below it: `sample` covers `sample.n`, not `samples`."""
    return any(key == entry or key.startswith(f"{entry}.") for entry in listed)


def in_deps(path: str, deps: list[str]) -> bool:
    return any(path == d or path.startswith(f"{d.rstrip('/')}/") for d in deps)


def modules_read(record: dict) -> dict[str, str]:
    """The project modules a stage's code imports, at any depth, each with the module that imported it: the import
    graph from the stage's module, not followed into PLUMBING. A loaded project module that no project module
    imported (torch.load's unpickler, say) counts too, "imported by other code": nothing shows that only plumbing
    needed it."""
    own = record["file"]
    graph: dict[str, set[str]] = defaultdict(set)
    for a, b in record["imports"]:
        if a and b and a != b:
            graph[a].add(b)
    via = {own: ""}
    todo = [own]
    while todo:
        m = todo.pop()
        if plumbing(m) and m != own:
            continue
        for n in sorted(graph[m]):
            if n not in via:
                via[n] = m
                todo.append(n)
    imported = {b for _, b in record["imports"]}
    for m in record["loaded"]:
        if m not in imported and m not in via:
            via[m] = "other code"
    return via


def empty_init(path: str) -> bool:
    """A package's empty __init__.py: it runs no code, so, as in pipelines/orchestration/stage_deps.py, no dep."""
    return Path(path).name == "__init__.py" and not (ROOT / path).read_text().strip()


def problems(address: str, stage: dict, record: dict) -> list[str]:
    """What the stage reads that dvc.yaml does not declare, as sentences naming the stage."""
    out = []
    own, deps, listed = record["file"], stage["deps"], stage["params"]
    if own is None or own.startswith(".."):
        out.append(f"{address}: its module {record['module']} is not a file of the checkout ({own})")
    elif not in_deps(own, deps):
        out.append(f"{address}: its own module {own} is not in dvc.yaml's deps")
    outside = [m for m in record["loaded"] if m.startswith("..")]
    if outside:
        out.append(f"{address}: imported project modules from outside the checkout: {', '.join(outside)}")
    if PARAMS_FILE not in deps:  # a stage whose deps hold params.yaml depends on every key
        keys = [k for k in record["keys"] if not covered(k, listed)]
        if keys:
            out.append(f"{address} reads {', '.join(keys)} but dvc.yaml lists only {', '.join(listed) or 'no params'}")
    via = modules_read(record)
    missing = [f"{m} (imported by {via[m]})" for m in sorted(via)
               if m != own and not plumbing(m) and not in_deps(m, deps) and not empty_init(m)]
    if missing:
        out.append(f"{address} imports {', '.join(missing)} but dvc.yaml's deps do not list "
                   f"{'it' if len(missing) == 1 else 'them'}")
    return out


class Traces(dict):
    """Kind -> (address, DVC's stage, the tracer's record or None, why not); short in a failure's report."""

    def __repr__(self) -> str:
        return f"<traces of {', '.join(v[0] for v in self.values())}>"


@pytest.fixture(scope="module")
def traced(small_run, tmp_path_factory) -> Traces:
    """Kind -> (address, DVC's stage, the tracer's record or None, why not): every kind traced in one copy of the
    built checkout, in DVC's order, so each stage reads what the stages before it wrote."""
    tmp = tmp_path_factory.mktemp("dag")
    repo = copy_of(small_run, tmp / "repo")
    dag = stages(repo)
    out = Traces()
    for kind, address in first_of_each_kind(dag).items():
        try:
            out[kind] = (address, dag[address], trace(repo, address, dag[address], tmp / f"{kind}.json"), "")
        except AssertionError as e:
            out[kind] = (address, dag[address], None, str(e))
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_stage_declares_every_param_and_module_it_reads(traced, kind):
    assert kind in traced, f"dvc.yaml stage {kind} has no instance in the small DAG"
    address, stage, record, error = traced[kind]
    assert record is not None, error
    found = problems(address, stage, record)
    if found:
        pytest.fail("\n".join(found), pytrace=False)


def test_tracer_records_reads_and_imports(small_run, tmp_path):
    """The tracer itself, on a probe module placed in a copy: field reads, cell reads, a whole section read, the `in`
    test that reads nothing, imports direct and through the registry, and the graph not followed into plumbing."""
    repo = copy_of(small_run, tmp_path / "repo")
    (repo / "pipelines" / "dag_probe.py").write_text(
        "import dataclasses, sys\n"
        "from pipelines.params import load_params\n"
        "from components.scoring.registry import FEATURE_EXTRACTORS\n"
        "p = load_params()\n"
        "name = next(iter(p.exact_sweep))\n"  # the whole exact_sweep
        "assert 'no-such-cell' not in p.sweep\n"  # nothing
        "steps = p.sweep[sys.argv[1]].steps\n"  # sweep.<cell>, sweep.<cell>.steps
        "p.guided_sweep.get('no-such-cell')\n"  # guided_sweep.no-such-cell
        "dataclasses.asdict(p.timing)\n"  # every timing field
        "n = p.sample.n\n"  # sample.n
        "network = p.train_ddpm.network.name\n"  # train_ddpm.network.name
        "FEATURE_EXTRACTORS['identity']\n"  # components/scoring/features.py, charged to this module
        "sys.exit(0)\n")
    raw = yaml.safe_load((repo / PARAMS_FILE).read_text())
    cell = next(iter(raw["sweep"]))
    probe = {"argv": ["python", "-m", "pipelines.dag_probe", cell], "outs": []}
    record = trace(repo, "probe", probe, tmp_path / "probe.json")
    assert record["keys"] == sorted({"exact_sweep", f"sweep.{cell}", f"sweep.{cell}.steps", "guided_sweep.no-such-cell",
                                     *(f"timing.{k}" for k in raw["timing"]), "sample.n", "train_ddpm.network.name"})
    via = modules_read(record)
    assert via["components/scoring/features.py"] == "pipelines/dag_probe.py"
    assert "components/math/schedules.py" not in via  # imported by params.py (plumbing) alone
    declared = {"deps": ["pipelines/dag_probe.py"], "params": ["sweep", "timing", "exact_sweep", "guided_sweep",
                                                               "sample.n", "train_ddpm.network"]}
    assert problems("probe", declared, record) == [
        "probe imports components/registry.py (imported by components/scoring/registry.py), "
        "components/scoring/features.py (imported by pipelines/dag_probe.py), "
        "components/scoring/registry.py (imported by pipelines/dag_probe.py) but dvc.yaml's deps do not list them"]


def test_comparison_names_what_is_missing():
    record = {"module": "pipelines.x", "file": "pipelines/x.py", "keys": ["data.name", "data.seed", "sweep.a.steps"],
              "imports": [["pipelines/x.py", "components/data/datasets.py"], ["pipelines/x.py", "pipelines/plumbing/loading.py"],
                          ["pipelines/plumbing/loading.py", "components/scoring/metrics.py"]],
              "loaded": ["components/data/datasets.py", "components/scoring/metrics.py", "pipelines/plumbing/loading.py", "pipelines/x.py"]}
    found = problems("x@a", {"deps": ["pipelines/x.py"], "params": ["data.name", "sweep.a"]}, record)
    assert found == ["x@a reads data.seed but dvc.yaml lists only data.name, sweep.a",
                     "x@a imports components/data/datasets.py (imported by pipelines/x.py) but dvc.yaml's deps do not list it"]
    declared = {"deps": ["pipelines/x.py", "components/data/datasets.py"], "params": ["data", "sweep"]}
    assert problems("x@a", declared, record) == []
    assert problems("x@a", {"deps": ["components"], "params": ["data", "sweep.b", "sweep.a"]}, record) == [
        "x@a: its own module pipelines/x.py is not in dvc.yaml's deps"]
