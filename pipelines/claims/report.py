"""The claims' results as text: the markdown table (claims.md), one short line per claim (`dvc metrics show`), and
what `make repro` prints at the end."""

from __future__ import annotations

from pipelines.claims.evaluate import summary


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
