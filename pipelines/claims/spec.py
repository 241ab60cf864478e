"""claims.yaml, read and checked before any compute: which table rows the papers' claims read, and their checks.

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
the one before − e (`decreasing`: at most it + e). How a claim is judged on the table: pipelines/claims/evaluate.py.
Every mistake in the file is one ClaimsError line naming the file and the entry (`claims.<id>.checks[0].op: ...`).
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.claims.columns import METRICS, SETTINGS
from pipelines.plumbing.errors import ParamsError
from pipelines.params.errors import show_key, show_value
from pipelines.params.reader import read_yaml

CLAIMS_FILE = "claims.yaml"
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


def _fail(where: str, message: str) -> None:
    raise ClaimsError(f"{where}: {message}")


def _number(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        _fail(where, f"expected a finite number, got {show_value(value)}")
    return float(value)


def _text(where: str, value: Any, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.strip():
        _fail(where, f"expected text, got {show_value(value)}")
    return value.strip()


def _ref(where: str, value: Any, rows: dict) -> Ref:
    """`row.column`: the row declared under `rows`, the column one of the table's metrics."""
    if not isinstance(value, str) or "." not in value:
        _fail(where, f"expected row.column (for example ddpm-1000.hq_fraction), got {show_value(value)}")
    row, column = value.rsplit(".", 1)
    _row(where, row, rows)
    _column(where, column)
    return Ref(row, column)


def _row(where: str, row: Any, rows: dict) -> str:
    if row not in rows:
        _fail(where, f"unknown row {show_value(row)}; declare it under `rows` (declared: {', '.join(rows)})")
    return row


def _column(where: str, column: Any) -> str:
    if column not in METRICS:
        _fail(where, f"unknown column {show_value(column)}; allowed: {', '.join(METRICS)}")
    return column


def _mapping(where: str, value: Any, allowed: tuple[str, ...], required: tuple[str, ...]) -> dict:
    if not isinstance(value, dict):
        _fail(where, f"expected a mapping, got {show_value(value)}")
    unknown = [k for k in value if k not in allowed]
    if unknown:
        _fail(f"{where}.{show_key(unknown[0])}", f"unknown key; allowed: {', '.join(allowed)}")
    missing = [k for k in required if k not in value]
    if missing:
        _fail(f"{where}.{missing[0]}", "missing key")
    return value


def parse_check(where: str, raw: Any, rows: dict) -> Check:
    if not isinstance(raw, dict):
        _fail(where, f"expected a mapping, got {show_value(raw)}")
    if "op" not in raw:
        _fail(f"{where}.op", f"missing key; allowed: {', '.join(OPERATORS)}")
    op = raw["op"]
    if op not in OPERATORS:
        _fail(f"{where}.op", f"unknown operator {show_value(op)}; allowed: {', '.join(OPERATORS)}")
    if op in TREND:
        c = _mapping(where, raw, ("op", "column", "rows", "tolerance"), ("op", "column", "rows"))
        if not isinstance(c["rows"], list) or len(c["rows"]) < 2:
            _fail(f"{where}.rows", f"expected a list of at least two rows, got {show_value(c['rows'])}")
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


def _parse_rows(raw: Any) -> dict[str, dict[str, Any]]:
    """`rows`: row name -> the settings (PIN_COLUMNS) it must have, text or a number each."""
    if not isinstance(raw, dict) or not raw:
        _fail("rows", f"expected a mapping of row name -> settings, got {show_value(raw)}")
    rows = {}
    for name, pins in raw.items():
        where = f"rows.{show_key(name)}"
        pins = {} if pins is None else _mapping(where, pins, PIN_COLUMNS, ())
        for col, v in pins.items():
            if v is not None and (isinstance(v, bool) or not isinstance(v, (str, int, float))):
                _fail(f"{where}.{col}", f"expected text or a number, got {show_value(v)}")
        rows[str(name)] = pins
    return rows


def _parse_claim(i: int, raw: Any, rows: dict, seen: set[str]) -> Claim:
    """Entry `i` of `claims`: a unique id, its text, and a non-empty list of checks on the declared rows."""
    where = f"claims[{i}]"
    c = _mapping(where, raw, CLAIM_KEYS, ("id", "paper", "source", "claim", "checks"))
    cid = c["id"]
    if not isinstance(cid, str) or not ID.fullmatch(cid):
        _fail(f"{where}.id", f"use 1 to 64 lower-case letters, digits, '_' or '-', got {show_value(cid)}")
    if cid in seen:
        _fail(f"{where}.id", f"{cid!r} is given twice")
    seen.add(cid)
    where = f"claims.{cid}"
    if not isinstance(c["checks"], list) or not c["checks"]:
        _fail(f"{where}.checks", f"expected a list of checks, got {show_value(c['checks'])}")
    return Claim(
        cid, _text(f"{where}.paper", c["paper"]), _text(f"{where}.source", c["source"]),
        _text(f"{where}.claim", c["claim"]), _text(f"{where}.paper_figure", c.get("paper_figure"), True),
        tuple(parse_check(f"{where}.checks[{j}]", k, rows) for j, k in enumerate(c["checks"])))


def parse_claims(raw: Any, source: str = CLAIMS_FILE) -> Claims:
    """claims.yaml's document as Claims; ClaimsError naming the file and the entry for any mistake."""
    try:
        top = _mapping("", raw, ("rows", "claims"), ("rows", "claims"))
        rows = _parse_rows(top["rows"])
        if not isinstance(top["claims"], list) or not top["claims"]:
            _fail("claims", f"expected a list of claims, got {show_value(top['claims'])}")
        seen: set[str] = set()
        claims = [_parse_claim(i, c, rows, seen) for i, c in enumerate(top["claims"])]
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
