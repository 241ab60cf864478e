"""`make demo`: the whole DAG on the `demo` profile's tiny budgets, in a fresh scratch workspace, in about two minutes.

    python -m pipelines.orchestration.demo [DIR]      # default: demo/ (git-ignored); a previous demo there is replaced

The profile mechanism (pipelines/orchestration/profile.py) with a workspace made afresh each time and a DVC cache of its own:
profiles/demo.yaml's `merge` shrinks every budget and its `replace` keeps one cell of each kind, so every stage of
the DAG runs, on numbers too small to mean anything. The workspace is untouched. The test suite builds its tiny
end-to-end runs from the same file (tests/conftest.py).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from pipelines.orchestration.profile import ROOT, commit, load_profile, run_dag, scratch_copy, write_params

MARK = ".trilemma-demo"  # what tells a previous demo (safe to replace) from any other folder


def budgets(root: Path = ROOT) -> tuple[dict, dict]:
    """profiles/demo.yaml's `merge` overrides (merged into params.yaml) and `replace` sections (replacing its own)."""
    doc = load_profile("demo", root)
    return doc["merge"], doc["replace"]


def main(argv: list[str]) -> int:
    dst = Path(argv[0] if argv else ROOT / "demo").resolve()
    if dst.exists():
        if not (dst / MARK).is_file():
            print(f"error: {dst} exists and is not a previous demo; name another folder", file=sys.stderr)
            return 2
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    scratch_copy(dst)
    write_params(dst, *budgets())
    (dst / MARK).write_text("made by `python -m pipelines.orchestration.demo`; replaced by the next demo\n")
    commit(dst, "trilemma demo: profiles/demo.yaml's tiny budgets")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    print(f"demo: the whole DAG on profiles/demo.yaml's tiny budgets in {dst}", flush=True)
    return run_dag(dst, env, f"demo: the table is {dst / 'metrics/trilemma.md'}, the figure "
                             f"{dst / 'metrics/trilemma.png'}; `make repro` runs the real budgets here", targets=())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
