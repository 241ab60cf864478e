"""The DAG's first stage, `validate`: params.yaml (and claims.yaml) checked before DVC deletes any other output.

    python -m pipelines.params [params.yaml [stamp]] [--claims claims.yaml]

It exits 2 with one line on error. The only module of the package that imports claims and restore: the rest of
pipelines.params imports neither, nor pipelines.io.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pipelines.claims.spec import load_claims
from pipelines.params.environment import check_environment
from pipelines.plumbing.errors import ParamsError
from pipelines.params.loader import PARAMS_FILE, load_params
from pipelines.plumbing.restore import restore_after_failure

USAGE = "usage: python -m pipelines.params [params.yaml [stamp]] [--claims claims.yaml]"
# The `validate` stage's output: constant, so it orders the DAG after validation without invalidating any stage.
STAMP_TEXT = "params.yaml passed pipelines.params validation"


def main(argv: list[str] | None = None) -> int:
    """`python -m pipelines.params [params.yaml [stamp]] [--claims claims.yaml]`: validate params (and the claims
    file, which the validate stage and `make repro` check before any compute); as the DAG's `validate` stage, also
    write `stamp`. With no arguments: params.yaml, and claims.yaml if there is one.

    The stamp's bytes never change, so the stages after `validate` rerun only for their own
    params: `validate` orders them after itself without ever invalidating them.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    claims = "claims.yaml" if not argv and Path("claims.yaml").is_file() else None
    if "--claims" in argv[:-1]:
        i = argv.index("--claims")
        claims = argv.pop(i + 1)
        argv.pop(i)
    if len(argv) > 2 or any(a.startswith("--") for a in argv):
        print(USAGE, file=sys.stderr)
        return 2
    path = argv[0] if argv else PARAMS_FILE
    try:
        check_environment(load_params(path))
        if claims is not None:
            load_claims(claims)  # ClaimsError is a ParamsError
    except ParamsError as e:
        restore_after_failure()  # as the validate stage: the stamp DVC deleted goes back
        print(f"error: {e}", file=sys.stderr)
        return 2
    if len(argv) == 2:
        stamp = Path(argv[1])
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(f"{STAMP_TEXT}\n")
    print(f"{path}: ok" + (f"; {claims}: ok" if claims else ""))
    return 0
