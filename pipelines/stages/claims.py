"""Stage `claims`: check the papers' claims (claims.yaml) against the trilemma table, on every run.

    python -m pipelines.stages.claims <trilemma.csv> <claims.yaml> <claims.json> <claims.md> <claims_dir>
    python -m pipelines.stages.claims summary <claims.json>      # what `make repro` prints at the end

The claims file's format: pipelines/claims/spec.py; how a claim is judged: pipelines/claims/evaluate.py; the text
it becomes: pipelines/claims/report.py. This module reads the table and writes the stage's outputs.

Outputs: claims.json (every claim with its checks and values), claims.md (holds?, claim, source, the
paper's figure, ours, the claim's words) and `<claims_dir>/<id>.json` ({status, figure}), which dvc.yaml declares as DVC
metrics, so `dvc metrics show` lists one row per claim.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from pipelines.claims.evaluate import STATUSES, Table, evaluate, summary
from pipelines.claims.report import headline, markdown, summary_lines
from pipelines.claims.spec import load_claims
from pipelines.claims.columns import METRICS, SETTINGS
from pipelines.plumbing.atomic import atomic_write_json, atomic_write_text
from pipelines.plumbing.entry import entry_point, stage_args
from pipelines.plumbing.errors import first_line, InputError
from pipelines.plumbing.tracking_spool import StageRun, log_stage_run


def _cell(text: str) -> str | float | None:
    """A CSV field as the table wrote it: empty is None, a number a float, anything else text."""
    if text == "":
        return None
    try:
        return float(text)
    except ValueError:
        return text


def read_table(csv_path: str | Path) -> Table:
    """trilemma.csv as {row: {column: value}}; InputError names the file. A file cut short (no final newline, a row
    with fewer fields than the header) is refused: its last rows would otherwise read as empty values."""
    def bad(why: str) -> InputError:
        return InputError(f"{csv_path}: {why}; rerun stage table")

    try:
        text = Path(csv_path).read_bytes().decode("utf-8")
        rows = list(csv.reader(io.StringIO(text)))
    except FileNotFoundError:
        raise InputError(f"{csv_path}: not found; run stage table") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise bad(f"not a table ({first_line(e)})") from None
    if not rows or not text.endswith("\n"):
        raise bad("empty or cut short")
    header = rows[0]
    missing = [c for c in (*SETTINGS, *METRICS) if c not in header]
    if missing:
        raise bad(f"no column {', '.join(missing)}")
    short = next((i for i, r in enumerate(rows[1:], 2) if len(r) != len(header)), None)
    if short is not None:
        raise bad(f"line {short} has {len(rows[short - 1])} fields, the header {len(header)}")
    return {r[0]: dict(zip(header, map(_cell, r))) for r in rows[1:]}


def stage_run(name: str, record: dict, artifacts: list[Path]) -> StageRun:
    """The MLflow run of a claims record (the stage's, and the sweep's parent run under Prefect): the counts as
    metrics, a tag `claim.<id>` = its status per claim, so runs filter and compare by what held."""
    s = record["summary"]
    return StageRun(name, metrics={f"claims.{k.replace(' ', '_')}": s[k] for k in STATUSES},
                    tags={f"claim.{c['id']}": c["status"] for c in record["claims"]}, artifacts=artifacts)


def print_summary(argv: list[str]) -> None:
    """`summary <claims.json>`: the counts and one line per claim; InputError naming the file if it is no record."""
    path = Path(stage_args(argv, ("claims.json",))[0])
    try:
        record = json.loads(path.read_text())
        lines = summary_lines(record)
    except FileNotFoundError:
        raise InputError(f"{path}: not found; run `dvc repro claims`") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"{path}: not a claims record ({type(e).__name__}); rerun `dvc repro claims`") from None
    print("\n".join(lines))


def main(argv: list[str]) -> None:
    if argv[:1] == ["summary"]:
        print_summary(argv[1:])
        return
    csv_path, claims_path, json_path, md_path, claims_dir = stage_args(
        argv, ("trilemma.csv", "claims.yaml", "claims.json", "claims.md", "claims_dir"))
    claims = load_claims(claims_path)
    results = evaluate(claims, read_table(csv_path))
    record = {"summary": summary(results), "claims": results}
    out = Path(claims_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in set(out.glob("*.json")) - {out / f"{r['id']}.json" for r in results}:
        stale.unlink()  # a claim removed from claims.yaml leaves no row behind in `dvc metrics show`
    for r in results:
        atomic_write_json(out / f"{r['id']}.json", {"status": r["status"], "figure": headline(r)})
    atomic_write_json(json_path, record)
    atomic_write_text(md_path, markdown(results))
    print("\n".join(summary_lines(record)))
    log_stage_run(stage_run("claims", record, [Path(json_path), Path(md_path)]))


if __name__ == "__main__":
    entry_point(main)
