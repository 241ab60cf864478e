"""Stage `claims`: check the papers' claims (claims.yaml) against the trilemma table, on every run.

    python -m pipelines.claims <trilemma.csv> <claims.yaml> <claims.json> <claims.md> <claims_dir>
    python -m pipelines.claims summary <claims.json>      # what `make repro` prints at the end

claims.yaml holds data, not code. `rows` declares each table row a claim reads, with the settings it must
have (a claim about `ddpm-1000` means 1000 ancestral steps with beta-tilde, whatever a user renames); every
claim lists `checks`, all of which must hold. A check is either a comparison of two table values, or of a
value with a number, or the trend of one column along a list of rows:

    {left: ddgan-4.modes, op: ">=", right: 25}
    {left: ddpm-1000.wall_s_per_1k, op: ">=", right: ddgan-4.wall_s_per_1k, times: 50}
    {left: iddpm-1000.hq_fraction, op: within, right: ddpm-1000.hq_fraction, tolerance: 0.02}
    {op: increasing, column: target_hit, rows: [ddpm-250-s0, ddpm-250-s1, ddpm-250-s2]}

With `times` k and `tolerance` e (defaults 1 and 0): `a >= b` holds when a >= k·b − e, `a <= b` when
a <= k·b + e (`>` and `<` likewise), `within` when |a − k·b| <= e, `increasing` when each value is at least
the one before − e (`decreasing`: at most it + e). A claim is "not measured", never held, when a row it
reads is missing from the table, has other settings than declared, or has no value in the column (a user
removed the cell, or the row has no likelihood). The stage never fails the run because a claim fails.

Outputs: claims.json (every claim with its checks and values), claims.md (holds?, claim, source, the
paper's figure, ours, the claim's words) and `<claims_dir>/<id>.json` ({status, figure}), which dvc.yaml declares as DVC
metrics, so `dvc metrics show` lists one row per claim.
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.columns import METRICS, SETTINGS
from pipelines.errors import ParamsError
from pipelines.params import _key, _show, read_yaml

if TYPE_CHECKING:  # tracking is imported when a run is logged, not to validate claims.yaml
    from pipelines.tracking_spool import StageRun

CLAIMS_FILE = "claims.yaml"
STATUSES = ("holds", "fails", "not measured")
COMPARE = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}
TREND = ("increasing", "decreasing")
OPERATORS = (*COMPARE, "within", *TREND)
ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")  # a file name, an MLflow tag key and a Prefect artifact key alike
CLAIM_KEYS = ("id", "paper", "source", "claim", "paper_figure", "checks")
PIN_COLUMNS = SETTINGS[1:]  # what a row declaration may pin: every setting but the name


class ClaimsError(ParamsError):
    """A claims.yaml entry that cannot be checked; the message names it."""


@dataclass(frozen=True)
class Ref:
    """One value of the table: `row.column`."""

    row: str
    column: str

    def __str__(self) -> str:
        return f"{self.row}.{self.column}"


@dataclass(frozen=True)
class Check:
    """`left op right` (right a Ref or a number, scaled by `times`), or a trend of `column` along `rows`."""

    op: str
    left: Ref | None = None
    right: Ref | float | None = None
    times: float = 1.0
    tolerance: float = 0.0
    column: str | None = None
    rows: tuple[str, ...] = ()

    def refs(self) -> list[Ref]:
        if self.op in TREND:
            return [Ref(r, self.column) for r in self.rows]
        return [self.left] + ([self.right] if isinstance(self.right, Ref) else [])

    def __str__(self) -> str:
        if self.op in TREND:
            return f"{self.column} {self.op} along {', '.join(self.rows)}"
        right = f"{self.times:g}·{self.right}" if self.times != 1 else f"{self.right}"
        slack = f" ± {self.tolerance:g}" if self.tolerance else ""
        return f"{self.left} {self.op} {right}{slack}"


@dataclass(frozen=True)
class Claim:
    id: str
    paper: str
    source: str
    claim: str
    paper_figure: str | None
    checks: tuple[Check, ...]


@dataclass(frozen=True)
class Claims:
    rows: dict[str, dict[str, Any]]  # row -> the settings it must have
    claims: tuple[Claim, ...]


# ---- loading: every mistake is one line naming where it is, before any compute ----

def _fail(where: str, message: str) -> None:
    raise ClaimsError(f"{where}: {message}")


def _number(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        _fail(where, f"expected a finite number, got {_show(value)}")
    return float(value)


def _text(where: str, value: Any, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.strip():
        _fail(where, f"expected text, got {_show(value)}")
    return value.strip()


def _ref(where: str, value: Any, rows: dict) -> Ref:
    """`row.column`: the row declared under `rows`, the column one of the table's metrics."""
    if not isinstance(value, str) or "." not in value:
        _fail(where, f"expected row.column (for example ddpm-1000.hq_fraction), got {_show(value)}")
    row, column = value.rsplit(".", 1)
    _row(where, row, rows)
    _column(where, column)
    return Ref(row, column)


def _row(where: str, row: Any, rows: dict) -> str:
    if row not in rows:
        _fail(where, f"unknown row {_show(row)}; declare it under `rows` (declared: {', '.join(rows)})")
    return row


def _column(where: str, column: Any) -> str:
    if column not in METRICS:
        _fail(where, f"unknown column {_show(column)}; allowed: {', '.join(METRICS)}")
    return column


def _mapping(where: str, value: Any, allowed: tuple[str, ...], required: tuple[str, ...]) -> dict:
    if not isinstance(value, dict):
        _fail(where, f"expected a mapping, got {_show(value)}")
    unknown = [k for k in value if k not in allowed]
    if unknown:
        _fail(f"{where}.{_key(unknown[0])}", f"unknown key; allowed: {', '.join(allowed)}")
    missing = [k for k in required if k not in value]
    if missing:
        _fail(f"{where}.{missing[0]}", "missing key")
    return value


def parse_check(where: str, raw: Any, rows: dict) -> Check:
    if not isinstance(raw, dict):
        _fail(where, f"expected a mapping, got {_show(raw)}")
    if "op" not in raw:
        _fail(f"{where}.op", f"missing key; allowed: {', '.join(OPERATORS)}")
    op = raw["op"]
    if op not in OPERATORS:
        _fail(f"{where}.op", f"unknown operator {_show(op)}; allowed: {', '.join(OPERATORS)}")
    if op in TREND:
        c = _mapping(where, raw, ("op", "column", "rows", "tolerance"), ("op", "column", "rows"))
        if not isinstance(c["rows"], list) or len(c["rows"]) < 2:
            _fail(f"{where}.rows", f"expected a list of at least two rows, got {_show(c['rows'])}")
        return Check(op, column=_column(f"{where}.column", c["column"]),
                     rows=tuple(_row(f"{where}.rows", r, rows) for r in c["rows"]),
                     tolerance=_tolerance(where, c))
    c = _mapping(where, raw, ("op", "left", "right", "times", "tolerance"), ("op", "left", "right"))
    right = c["right"]
    right = _ref(f"{where}.right", right, rows) if isinstance(right, str) else _number(f"{where}.right", right)
    times = _number(f"{where}.times", c.get("times", 1))
    if times <= 0:
        _fail(f"{where}.times", f"must be positive, got {times:g}")
    check = Check(op, _ref(f"{where}.left", c["left"], rows), right, times, _tolerance(where, c))
    if op == "within" and "tolerance" not in c:
        _fail(f"{where}.tolerance", "missing key: `within` needs the tolerance it allows")
    return check


def _tolerance(where: str, c: dict) -> float:
    tol = _number(f"{where}.tolerance", c.get("tolerance", 0))
    if tol < 0:
        _fail(f"{where}.tolerance", f"must be at least 0, got {tol:g}")
    return tol


def parse_claims(raw: Any, source: str = CLAIMS_FILE) -> Claims:
    """claims.yaml's document as Claims; ClaimsError naming the file and the entry for any mistake."""
    try:
        top = _mapping("", raw, ("rows", "claims"), ("rows", "claims"))
        if not isinstance(top["rows"], dict) or not top["rows"]:
            _fail("rows", f"expected a mapping of row name -> settings, got {_show(top['rows'])}")
        rows = {}
        for name, pins in top["rows"].items():
            where = f"rows.{_key(name)}"
            pins = {} if pins is None else _mapping(where, pins, PIN_COLUMNS, ())
            for col, v in pins.items():
                if v is not None and (isinstance(v, bool) or not isinstance(v, (str, int, float))):
                    _fail(f"{where}.{col}", f"expected text or a number, got {_show(v)}")
            rows[str(name)] = pins
        if not isinstance(top["claims"], list) or not top["claims"]:
            _fail("claims", f"expected a list of claims, got {_show(top['claims'])}")
        claims, seen = [], set()
        for i, c in enumerate(top["claims"]):
            where = f"claims[{i}]"
            c = _mapping(where, c, CLAIM_KEYS, ("id", "paper", "source", "claim", "checks"))
            cid = c["id"]
            if not isinstance(cid, str) or not ID.fullmatch(cid):
                _fail(f"{where}.id", f"use 1 to 64 lower-case letters, digits, '_' or '-', got {_show(cid)}")
            if cid in seen:
                _fail(f"{where}.id", f"{cid!r} is given twice")
            seen.add(cid)
            where = f"claims.{cid}"
            if not isinstance(c["checks"], list) or not c["checks"]:
                _fail(f"{where}.checks", f"expected a list of checks, got {_show(c['checks'])}")
            claims.append(Claim(
                cid, _text(f"{where}.paper", c["paper"]), _text(f"{where}.source", c["source"]),
                _text(f"{where}.claim", c["claim"]), _text(f"{where}.paper_figure", c.get("paper_figure"), True),
                tuple(parse_check(f"{where}.checks[{j}]", k, rows) for j, k in enumerate(c["checks"]))))
    except ClaimsError as e:
        raise ClaimsError(f"{source}: {str(e).lstrip('.: ')}") from None
    return Claims(rows, tuple(claims))


def load_claims(path: str | Path = CLAIMS_FILE) -> Claims:
    """Read and validate claims.yaml."""
    try:
        raw = read_yaml(path)
    except ParamsError as e:
        raise ClaimsError(str(e)) from None
    return parse_claims(raw, str(path))


# ---- checking: pure functions of the table ----

Table = dict[str, dict[str, Any]]  # row name -> column -> value (settings and metrics)


def _value(table: Table, ref: Ref) -> float | None:
    v = table.get(ref.row, {}).get(ref.column)
    if v is None or isinstance(v, str):
        return None
    v = float(v)
    return None if math.isnan(v) else v


def unmeasured(claims: Claims, table: Table, claim: Claim) -> str | None:
    """Why `claim` cannot be measured on `table` (a missing row, other settings, an empty value), or None."""
    for check in claim.checks:
        for ref in check.refs():
            row = table.get(ref.row)
            if row is None:
                return f"no row {ref.row} in the table"
            for col, want in claims.rows[ref.row].items():
                have = row.get(col)
                if not _same(have, want):
                    return f"{ref.row} has {col} {_show(have)}, the claim reads it with {_show(want)}"
            if _value(table, ref) is None:
                return f"{ref} is empty"
    return None


def _same(have: Any, want: Any) -> bool:
    if want is None:
        return have is None or (isinstance(have, float) and math.isnan(have))
    if isinstance(want, str) or isinstance(have, str):
        return str(have) == str(want)
    return have is not None and not math.isnan(float(have)) and float(have) == float(want)


def _close(a: float, b: float) -> bool:
    """Equal but for float rounding: 0.9 - 0.7 is within a tolerance of 0.2, as the decimal figures say."""
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def _at_least(a: float, b: float) -> bool:
    return a >= b or _close(a, b)


def check_holds(check: Check, table: Table) -> tuple[bool, str]:
    """Whether `check` holds on `table` (every value present), with the values it compared."""
    if check.op in TREND:
        values = [_value(table, r) for r in check.refs()]
        sign = 1 if check.op == "increasing" else -1
        ok = all(_at_least(sign * (b - a), -check.tolerance) for a, b in zip(values, values[1:]))
        return ok, f"{check.column}: {' → '.join(f'{v:.4g}' for v in values)}"
    a = _value(table, check.left)
    b = _value(table, check.right) if isinstance(check.right, Ref) else check.right
    target = check.times * b
    if check.op == "within":
        ok = _at_least(check.tolerance, abs(a - target))
    else:
        slack = -check.tolerance if check.op in (">=", ">") else check.tolerance
        ok = COMPARE[check.op](a, target + slack) or (check.op in (">=", "<=") and _close(a, target + slack))
    if not isinstance(check.right, Ref):
        return ok, f"{check.left} {a:.4g} (claim: {check.op} {b:g})"
    r = check.right
    shown = f"{check.left.column}: {check.left.row} {a:.4g} vs {r.row} {b:.4g}" if r.column == check.left.column \
        else f"{check.left} {a:.4g} vs {r} {b:.4g}"
    return ok, shown + (f" (ratio {a / b:.3g}, claim: {check.times:g})" if check.times != 1 and b else "")


def evaluate(claims: Claims, table: Table) -> list[dict]:
    """Every claim's status ("holds", "fails" or "not measured"), our figure and its checks."""
    out = []
    for claim in claims.claims:
        why = unmeasured(claims, table, claim)
        checks = []
        if why is None:
            for check in claim.checks:
                ok, shown = check_holds(check, table)
                checks.append({"check": str(check), "holds": ok, "values": shown})
        status = "not measured" if why else "holds" if all(c["holds"] for c in checks) else "fails"
        out.append({"id": claim.id, "paper": claim.paper, "source": claim.source, "claim": claim.claim,
                    "paper_figure": claim.paper_figure, "status": status,
                    "figure": why or "; ".join(c["values"] + ("" if c["holds"] else " ✗") for c in checks),
                    "checks": checks or [{"check": str(k), "holds": None, "values": None} for k in claim.checks]})
    return out


def summary(results: list[dict]) -> dict[str, int]:
    counts = {s: sum(r["status"] == s for r in results) for s in STATUSES}
    return {**counts, "total": len(results)}


CLAIMS_COLUMNS = ("holds?", "claim", "paper, source", "paper's figure", "our figure", "what it says")


def markdown(results: list[dict]) -> str:
    """The claims table, verdict and id first and the long text last, so that a narrow view (a 1,440-px Prefect
    artifact, a terminal) shows which claim holds before it shows why: holds?, claim, paper and source, the paper's
    figure, ours, the claim's words."""
    s = summary(results)
    lines = [f"{s['holds']} of {s['total']} claims hold, {s['fails']} fail, {s['not measured']} not measured "
             f"(`claims.yaml`; ✗ marks a check that fails).\n",
             "| " + " | ".join(CLAIMS_COLUMNS) + " |", "|" + "---|" * len(CLAIMS_COLUMNS)]
    for r in results:
        verdict = {"holds": "**yes**", "fails": "no", "not measured": "not measured"}[r["status"]]
        lines.append(f"| {verdict} | `{r['id']}` | {r['paper']}, {r['source']} | {r['paper_figure'] or ''} | "
                     f"{r['figure']} | {r['claim']} |")
    return "\n".join(lines) + "\n"


def headline(result: dict) -> str:
    """A claim's figure in one short line (a `dvc metrics show` column): its first failing check, else its first."""
    if result["status"] == "not measured":
        return _clip(result["figure"], 48)
    first = next((c for c in result["checks"] if not c["holds"]), result["checks"][0])
    more = len(result["checks"]) - 1
    return _clip(first["values"], 48) + (f" (+{more} more)" if more else "")


def summary_lines(record: dict) -> list[str]:
    """What `make repro` prints at the end: the counts and one line per claim."""
    s = record["summary"]
    width = max(len(r["id"]) for r in record["claims"])
    lines = [f"claims: {s['holds']} of {s['total']} hold, {s['fails']} fail, {s['not measured']} not measured "
             f"(metrics/claims.md)"]
    lines += [f"  {r['status']:<12}  {r['id']:<{width}}  {_clip(r['figure'], 100)}" for r in record["claims"]]
    return lines


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[:n - 1] + "…"


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
    import csv
    import io

    from pipelines.errors import InputError, first_line

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
    from pipelines.tracking_spool import StageRun

    s = record["summary"]
    return StageRun(name, metrics={f"claims.{k.replace(' ', '_')}": s[k] for k in STATUSES},
                    tags={f"claim.{c['id']}": c["status"] for c in record["claims"]}, artifacts=artifacts)


def main(argv: list[str]) -> None:
    import json

    from pipelines.atomic import atomic_write_json, atomic_write_text
    from pipelines.entry import stage_args
    from pipelines.tracking_spool import log_stage_run

    if argv[:1] == ["summary"]:
        from pipelines.errors import InputError

        path = Path(stage_args(argv[1:], ("claims.json",))[0])
        try:
            record = json.loads(path.read_text())
            lines = summary_lines(record)
        except FileNotFoundError:
            raise InputError(f"{path}: not found; run `dvc repro claims`") from None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise InputError(f"{path}: not a claims record ({type(e).__name__}); rerun `dvc repro claims`") from None
        print("\n".join(lines))
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
    from pipelines.entry import entry_point

    entry_point(main)
