"""The papers' claims judged on the trilemma table: pure functions of the table, no file read or written.

A claim is "not measured", never held, when a row it reads is missing from the table, has other settings than
declared, or has no value in the column (a user removed the cell, or the row has no likelihood). The stage never
fails the run because a claim fails.
"""

from __future__ import annotations

import math
from typing import Any

from pipelines.claims.spec import COMPARE, TREND, Check, Claim, Claims, Ref
from pipelines.params.errors import show_value

STATUSES = ("holds", "fails", "not measured")


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
                    return f"{ref.row} has {col} {show_value(have)}, the claim reads it with {show_value(want)}"
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
