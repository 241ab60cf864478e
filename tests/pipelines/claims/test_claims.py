"""The papers' claims as data: claims.yaml's loader, every operator, and the `claims` stage on a real DVC run."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import mlflow
import pytest
import yaml

from conftest import ROOT, copy_of, edited, run
from pipelines.claims.evaluate import evaluate, summary
from pipelines.claims.report import headline, markdown, summary_lines
from pipelines.claims.spec import OPERATORS, ClaimsError, load_claims, parse_claims
from pipelines.params import load_params

ROWS = {"a": {"sampler": "ddpm", "steps": 10}, "b": {}, "c": {}}


def claims_of(*checks: dict, rows: dict = ROWS) -> dict:
    return {"rows": rows, "claims": [{"id": "c1", "paper": "P", "source": "Table 1", "claim": "a claim",
                                      "checks": list(checks)}]}


def status(table: dict, *checks: dict, rows: dict = ROWS) -> str:
    return evaluate(parse_claims(claims_of(*checks, rows=rows)), table)[0]["status"]


TABLE = {"a": {"cell": "a", "sampler": "ddpm", "steps": 10, "hq_fraction": 0.9, "fid": 2.0, "nll": None},
         "b": {"cell": "b", "hq_fraction": 0.5, "fid": 4.0, "nll": 1.0},
         "c": {"cell": "c", "hq_fraction": 0.7, "fid": 1.0, "nll": 2.0}}


# ---- each operator: holds, fails, not measured ----

@pytest.mark.parametrize("check, holds", [
    ({"left": "a.hq_fraction", "op": ">=", "right": "b.hq_fraction"}, True),
    ({"left": "b.hq_fraction", "op": ">=", "right": "a.hq_fraction"}, False),
    ({"left": "b.hq_fraction", "op": ">=", "right": "a.hq_fraction", "tolerance": 0.4}, True),  # 0.5 >= 0.9 - 0.4
    ({"left": "b.hq_fraction", "op": ">=", "right": "a.hq_fraction", "tolerance": 0.39}, False),
    ({"left": "a.hq_fraction", "op": ">", "right": 0.9}, False),  # strict
    ({"left": "a.hq_fraction", "op": ">", "right": 0.89}, True),
    ({"left": "a.fid", "op": "<=", "right": 2}, True),
    ({"left": "a.fid", "op": "<", "right": 2}, False),
    ({"left": "a.fid", "op": "<", "right": "b.fid", "times": 0.5}, False),  # 2 < 0.5 * 4 is false
    ({"left": "b.fid", "op": ">=", "right": "a.fid", "times": 2}, True),  # 4 >= 2 * 2: "at least 2x"
    ({"left": "b.fid", "op": ">=", "right": "a.fid", "times": 2.1}, False),
    ({"left": "a.fid", "op": "within", "right": "b.fid", "times": 0.5, "tolerance": 0}, True),
    ({"left": "a.hq_fraction", "op": "within", "right": "c.hq_fraction", "tolerance": 0.2}, True),
    ({"left": "a.hq_fraction", "op": "within", "right": "c.hq_fraction", "tolerance": 0.19}, False),
    ({"op": "increasing", "column": "hq_fraction", "rows": ["b", "c", "a"]}, True),
    ({"op": "increasing", "column": "hq_fraction", "rows": ["b", "a", "c"]}, False),
    ({"op": "increasing", "column": "hq_fraction", "rows": ["b", "a", "c"], "tolerance": 0.2}, True),
    ({"op": "decreasing", "column": "fid", "rows": ["b", "a", "c"]}, True),
    ({"op": "decreasing", "column": "fid", "rows": ["a", "b"]}, False),
])
def test_each_operator_holds_or_fails_on_a_hand_made_table(check, holds):
    assert status(TABLE, check) == ("holds" if holds else "fails")


def test_the_operators_tested_are_all_there_are():
    tested = {"<", "<=", ">", ">=", "within", "increasing", "decreasing"}
    assert set(OPERATORS) == tested


@pytest.mark.parametrize("check", [
    {"left": "a.hq_fraction", "op": ">=", "right": 0.5},
    {"left": "a.fid", "op": "<", "right": "b.fid"},
    {"left": "a.fid", "op": "within", "right": 2.0, "tolerance": 0.1},
    {"op": "increasing", "column": "hq_fraction", "rows": ["b", "a"]},
    {"op": "decreasing", "column": "fid", "rows": ["b", "a"]},
])
def test_a_claim_on_a_missing_row_or_other_settings_or_empty_value_is_not_measured(check):
    """Every operator: a removed row, a row with other settings than declared and an empty value are "not
    measured", whether or not the values left would have held."""
    assert status(TABLE, check) == "holds"
    without_a = {k: v for k, v in TABLE.items() if k != "a"}
    assert status(without_a, check) == "not measured"
    other = {**TABLE, "a": {**TABLE["a"], "steps": 50}}  # a user redefined cell a: 50 steps, not 10
    assert status(other, check) == "not measured"
    empty = {**TABLE, "a": {**TABLE["a"], "hq_fraction": math.nan, "fid": None}}
    assert status(empty, check) == "not measured"


def test_not_measured_says_why_and_is_never_counted_as_held():
    claims = parse_claims({"rows": ROWS, "claims": [
        {"id": "held", "paper": "P", "source": "S", "claim": "x", "checks": [
            {"left": "b.fid", "op": ">", "right": "a.fid"}]},
        {"id": "empty", "paper": "P", "source": "S", "claim": "x", "checks": [
            {"left": "a.nll", "op": "<", "right": "b.nll"}]},
        {"id": "other", "paper": "P", "source": "S", "claim": "x", "checks": [
            {"left": "a.fid", "op": ">", "right": 100}]},
    ]})
    results = evaluate(claims, TABLE)
    assert [r["status"] for r in results] == ["holds", "not measured", "fails"]
    assert results[1]["figure"] == "a.nll is empty"
    assert summary(results) == {"holds": 1, "fails": 1, "not measured": 1, "total": 3}
    gone = evaluate(claims, {"b": TABLE["b"]})
    assert gone[0]["figure"] == "no row a in the table" and summary(gone)["holds"] == 0
    md = markdown(results)
    assert md.startswith("1 of 3 claims hold, 1 fail, 1 not measured")
    assert "| not measured | `empty` | P, S |  | a.nll is empty | x |" in md
    header = md.splitlines()[2]  # verdict and id lead: a narrow view shows them before the long text
    assert header.startswith("| holds? | claim |") and header.endswith("| what it says |")
    assert headline(results[2]) == "a.fid 2 (claim: > 100)"
    lines = summary_lines({"summary": summary(results), "claims": results})
    assert lines[0].startswith("claims: 1 of 3 hold") and len(lines) == 4 and "not measured  empty" in lines[2]


# ---- bad claims files: one line naming the mistake ----

GOOD = claims_of({"left": "a.hq_fraction", "op": ">=", "right": "b.hq_fraction"})


def edited_claims(path: str, value) -> dict:
    """GOOD with the entry at `path` (keys and list indices split on '/') set to `value`, or removed if None."""
    return edited(GOOD, [int(p) if p.isdigit() else p for p in path.split("/")], value)


@pytest.mark.parametrize("doc, message", [
    (edited_claims("claims/0/checks/0/left", "x.hq_fraction"), "claims.c1.checks[0].left: unknown row 'x'; declare it "
                                                         "under `rows` (declared: a, b, c)"),
    (edited_claims("claims/0/checks/0/right", "b.hq"), "claims.c1.checks[0].right: unknown column 'hq'; allowed: nfe,"),
    (edited_claims("claims/0/checks/0/op", "=>"), "claims.c1.checks[0].op: unknown operator '=>'; allowed: >=, >, <=, <, "
                                           "within, increasing, decreasing"),
    (edited_claims("claims/0/checks/0/left", "hq_fraction"), "claims.c1.checks[0].left: expected row.column"),
    (edited_claims("claims/0/checks/0/right", True), "claims.c1.checks[0].right: expected a finite number, got True"),
    (edited_claims("claims/0/checks/0/tolerance", -0.1), "claims.c1.checks[0].tolerance: must be at least 0, got -0.1"),
    (edited_claims("claims/0/checks/0/times", 0), "claims.c1.checks[0].times: must be positive, got 0"),
    (edited_claims("claims/0/checks/0/by", 2), "claims.c1.checks[0].by: unknown key; allowed: op, left, right, times, "
                                        "tolerance"),
    (edited_claims("claims/0/checks/0/op", "within"), "claims.c1.checks[0].tolerance: missing key: `within` needs"),
    (edited_claims("claims/0/checks/0", {"op": "increasing", "column": "fid", "rows": ["a"]}),
     "claims.c1.checks[0].rows: expected a list of at least two rows, got ['a']"),
    (edited_claims("claims/0/checks/0", {"op": "increasing", "column": "fid", "rows": ["a", "z"]}),
     "claims.c1.checks[0].rows: unknown row 'z'"),
    (edited_claims("claims/0/checks/0", {"left": "a.fid", "right": 1}), "claims.c1.checks[0].op: missing key; allowed:"),
    (edited_claims("claims/0/checks/0", "a.fid >= 1"), "claims.c1.checks[0]: expected a mapping, got 'a.fid >= 1'"),
    (edited_claims("claims/0/checks", []), "claims.c1.checks: expected a list of checks, got []"),
    (edited_claims("claims/0/source", None), "claims[0].source: missing key"),
    (edited_claims("claims/0/id", "Has Space"), "claims[0].id: use 1 to 64 lower-case letters"),
    (edited_claims("claims/0/paper", ""), "claims.c1.paper: expected text, got ''"),
    (edited_claims("claims/0/year", 2020), "claims[0].year: unknown key; allowed: id, paper, source, claim, paper_figure"),
    (edited_claims("rows/a/steps", [10]), "rows.a.steps: expected text or a number, got [10]"),
    (edited_claims("rows/a/cfg", 1), "rows.a.cfg: unknown key; allowed: data, model, sampler, steps, trajectory, "
                                        "eta, variance, scale, condition, n, extractor"),
    (edited_claims("rows", None), "rows: missing key"),
    ({**GOOD, "claims": GOOD["claims"] * 2}, "claims[1].id: 'c1' is given twice"),
    ([1, 2], "expected a mapping, got [1, 2]"),
])
def test_each_mistake_in_a_claims_file_is_one_line_naming_it(tmp_path, doc, message):
    path = tmp_path / "claims.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    with pytest.raises(ClaimsError) as e:
        load_claims(path)
    text = str(e.value)
    assert "\n" not in text and text.startswith(f"{path}: ") and message in text, text


@pytest.mark.parametrize("content, message", [
    ("rows: {a: {}}\nrows: {b: {}}\n", "line 2: duplicate key 'rows' (first given at line 1)"),
    ("rows: [\n", "not valid YAML"),
    (b"rows: \xff\n", "line 1: not UTF-8 (byte 0xff)"),
])
def test_a_claims_file_that_is_not_yaml_is_one_line(tmp_path, content, message):
    path = tmp_path / "claims.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ClaimsError) as e:
        load_claims(path)
    assert "\n" not in str(e.value) and message in str(e.value), str(e.value)


def test_the_repository_claims_file_is_valid_and_covers_every_paper():
    claims = load_claims(ROOT / "claims.yaml")
    papers = {c.paper.split(" (")[0] for c in claims.claims}
    assert {"Sohl-Dickstein et al. 2015", "DDPM", "DDIM", "Improved DDPM", "Classifier guidance", "DDGAN",
            "this project"} <= papers
    assert_rows_defined(claims, load_params(ROOT / "params.yaml"))


def assert_rows_defined(claims, params) -> None:
    """Every row `claims` declares (but `data`) is a cell of `params` with the declared settings."""
    cells = {name: {"data": params.data.name, "model": getattr(cell, "model", "exact"), "sampler": cell.sampler,
                    "steps": cell.steps, "scale": cell.scale, **cell.sampler_kwargs(),
                    "trajectory": cell.trajectory if cell.sampler != "ddgan" else None,
                    "condition": cell.condition.describe() if cell.condition else None}
             for name, cell in params.cells().items()}
    for row, pins in claims.rows.items():
        if row == "data":
            continue
        assert row in cells, row
        assert all(cells[row].get(k) == v for k, v in pins.items()), row


def test_validation_checks_the_claims_file_before_any_compute(small_run, tmp_path):
    """`make repro`'s check and the DAG's validate stage: a bad claims.yaml stops the run in one line, and no stage
    after validate runs."""
    repo = copy_of(small_run, tmp_path / "repo")
    text = (repo / "claims.yaml").read_text().replace("op: \">=\"", "op: \"=>\"", 1)
    (repo / "claims.yaml").write_text(text)
    check = run([sys.executable, "-m", "pipelines.params"], repo, check=False)
    assert check.returncode == 2
    assert re.fullmatch(r"error: claims\.yaml: claims\.[a-z0-9-]+\.checks\[\d\]\.op: unknown operator '=>'; "
                        r"allowed: .*\n", check.stderr), check.stderr
    repro = run(["dvc", "repro"], repo, check=False)
    assert repro.returncode != 0 and "unknown operator '=>'" in repro.stdout + repro.stderr
    assert "Running stage 'table'" not in repro.stdout and "Running stage 'claims'" not in repro.stdout


# ---- the stage, on the tiny end-to-end run ----

def test_the_stage_on_the_tiny_run_reports_unmeasured_claims_never_held(small_run):
    """The tiny DAG has one cell of each kind, none of them the rows the repository's claims read: every claim is
    "not measured", with its reason, in claims.json, claims.md and one metrics file per claim."""
    record = json.loads((small_run / "metrics/claims.json").read_text())
    ids = [c.id for c in load_claims(small_run / "claims.yaml").claims]
    assert [c["id"] for c in record["claims"]] == ids
    assert record["summary"]["holds"] == 0 and record["summary"]["total"] == len(ids)
    assert all(c["status"] == "not measured" and c["figure"] for c in record["claims"])
    assert sorted(p.stem for p in (small_run / "metrics/claims").glob("*.json")) == sorted(ids)
    assert (small_run / "metrics/claims.md").read_text().startswith(f"0 of {len(ids)} claims hold")


def test_the_stage_checks_claims_logs_them_and_dvc_metrics_show_lists_them(small_run, tmp_path):
    repo = copy_of(small_run, tmp_path / "repo")
    row = {"model": "ddpm", "sampler": "ddpm", "steps": 4, "variance": "small"}
    doc = {"rows": {"ddpm-4": row, "ddim-4": {"sampler": "ddim", "steps": 4}, "ddgan-1": {}, "ddgan-2": {},
                    "removed": {}},
           "claims": [
               {"id": "fewer-nfe", "paper": "DDGAN", "source": "Table 1", "claim": "one step is cheaper",
                "paper_figure": "NFE 4 against 1000",
                "checks": [{"left": "ddpm-4.nfe", "op": ">=", "right": "ddgan-1.nfe", "times": 4}]},
               {"id": "impossible", "paper": "P", "source": "S", "claim": "more than all modes",
                "checks": [{"left": "ddim-4.modes", "op": ">", "right": 1000}]},
               {"id": "gone", "paper": "P", "source": "S", "claim": "a removed cell",
                "checks": [{"op": "increasing", "column": "nfe", "rows": ["ddgan-1", "ddgan-2", "removed"]}]}]}
    (repo / "claims.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    (repo / "metrics/claims/stale-claim.json").write_text('{"status": "holds"}')  # removed from claims.yaml
    out = run(["dvc", "repro"], repo).stdout
    assert "Running stage 'claims'" in out and "Running stage 'table'" in out  # the figure marks the claimed rows
    assert "Running stage 'train_ddpm'" not in out and "Running stage 'sample@" not in out
    assert "claims: 1 of 3 hold, 1 fail, 1 not measured" in out

    record = json.loads((repo / "metrics/claims.json").read_text())
    assert [(c["id"], c["status"]) for c in record["claims"]] == [
        ("fewer-nfe", "holds"), ("impossible", "fails"), ("gone", "not measured")]
    assert record["claims"][0]["figure"] == "nfe: ddpm-4 4 vs ddgan-1 1 (ratio 4, claim: 4)"
    assert record["claims"][2]["figure"] == "no row removed in the table"

    workspace = next(iter(json.loads(run(["dvc", "metrics", "show", "--json"], repo).stdout).values()))
    by_file = {k: v["data"] for k, v in workspace["data"].items()}
    assert by_file["metrics/claims/fewer-nfe.json"] == {"status": "holds", "figure": record["claims"][0]["figure"]}
    assert by_file["metrics/claims/impossible.json"]["status"] == "fails"
    assert "metrics/claims/stale-claim.json" not in by_file
    assert "metrics/trilemma.json" not in by_file  # the table is not one 500-column row
    assert by_file["metrics/cells/ddpm-4.json"]["nfe"] == 4
    table = run(["dvc", "metrics", "show"], repo).stdout
    assert max(len(line) for line in table.splitlines()) < 300, table  # one row per cell, about 20 columns

    run([sys.executable, "-m", "pipelines.plumbing.tracking", "flush"], repo)
    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["trilemma"], filter_string="tags.`claim.impossible` = 'fails'")
    assert list(runs["tags.mlflow.runName"]) == ["claims"]
    assert runs.loc[0, "metrics.claims.holds"] == 1 and runs.loc[0, "tags.claim.gone"] == "not measured"
    client = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    assert {"claims.json", "claims.md"} <= {a.path for a in client.list_artifacts(runs.loc[0, "run_id"])}


# ---- the repository stands on its own ----

OUTSIDE = re.compile(r"\.\./shared|REFERENCE\.md|ENVIRONMENT\.md|STYLE\.md|/work/")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_no_file_in_the_repository_refers_to_a_file_outside_it():
    """No tracked file names the development machine's notes (or any path above the checkout), and every relative
    markdown link resolves to a file in the repository."""
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    this = "tests/pipelines/claims/test_claims.py"
    for name in files:
        path = ROOT / name
        if name == this or not path.is_file() or path.suffix in (".png", ".npz", ".pt", ".lock"):
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        hit = OUTSIDE.search(text)
        assert hit is None, f"{name} refers outside the repository: {hit.group(0)!r}"
        if path.suffix == ".md":
            for target in LINK.findall(text):
                if re.match(r"[a-z]+:", target):
                    continue
                resolved = (path.parent / target).resolve()
                assert resolved.is_relative_to(ROOT) and resolved.exists(), f"{name}: broken link {target}"


def test_the_summary_command_names_a_missing_or_broken_record(tmp_path):
    """What `make repro` ends with: one line naming the file when the claims record is missing or not one."""
    for content, message in ((None, "not found; run `dvc repro claims`"), ("[1]", "not a claims record")):
        path = tmp_path / "claims.json"
        if content is not None:
            path.write_text(content)
        proc = run([sys.executable, "-m", "pipelines.stages.claims", "summary", str(path)], ROOT, check=False)
        assert proc.returncode == 2 and proc.stderr.startswith(f"error: {path}: {message}")
        assert proc.stderr.count("\n") == 1
