"""`make demo`: the whole DAG on a tiny budget, in a scratch copy of the repository, in about two minutes.

    python -m pipelines.demo [DIR]      # default: demo/ (git-ignored); a previous demo there is replaced

It copies the checkout's files (tracked, and untracked ones git does not ignore) into DIR, makes it its own git
and DVC repository, writes params.yaml with demo.yaml's budgets (`tiny`) and one cell of each kind
(`one_cell_each`), and runs `dvc repro` there: every stage of the DAG runs, on numbers too small to mean anything.
The workspace is untouched. The test suite builds its tiny end-to-end runs the same way (tests/conftest.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEMO_FILE = "demo.yaml"
MARK = ".trilemma-demo"  # what tells a previous demo (safe to replace) from any other folder


def budgets(root: Path = ROOT) -> tuple[dict, dict]:
    """demo.yaml's `tiny` overrides (merged into params.yaml) and `one_cell_each` sections (replacing its own)."""
    doc = yaml.safe_load((root / DEMO_FILE).read_text())
    return doc["tiny"], doc["one_cell_each"]


def merge(base: dict, over: dict) -> dict:
    """`over` merged into `base` key by key; a network's options are replaced whole (another network's keys differ)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) and k != "network" else v
    return out


def write_params(repo: Path, overrides: dict, replace: dict | None = None, root: Path = ROOT) -> None:
    """`root`'s params.yaml with `overrides` merged in and the sections of `replace` replaced whole, into `repo`."""
    params = yaml.safe_load((root / "params.yaml").read_text())
    (repo / "params.yaml").write_text(yaml.safe_dump({**merge(params, overrides), **(replace or {})}, sort_keys=False))


def scratch_copy(dst: Path, root: Path = ROOT) -> Path:
    """`root`'s files (tracked, and untracked ones git does not ignore) copied into `dst`."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=root, capture_output=True,
                           text=True, check=True).stdout.splitlines()
    for f in files:
        if (root / f).is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / f, dst / f)
    return dst


def commit(repo: Path, message: str) -> None:
    """`repo` as a new git repository holding its files in one commit (DVC's lock and experiments need one)."""
    git = ["git", "-c", "user.name=trilemma", "-c", "user.email=trilemma@localhost"]
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", message]):
        subprocess.run(git + cmd, cwd=repo, check=True, capture_output=True)


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
    (dst / MARK).write_text("made by `python -m pipelines.demo`; replaced by the next demo\n")
    commit(dst, "trilemma demo: demo.yaml's tiny budgets")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    print(f"demo: the whole DAG on demo.yaml's tiny budgets in {dst}", flush=True)
    for cmd in (["dvc", "repro"], ["pipelines.tracking", "flush"], ["pipelines.claims", "summary", "metrics/claims.json"]):
        code = subprocess.run([sys.executable, "-m", *cmd], cwd=dst, env=env).returncode
        if code != 0:
            return code
    print(f"demo: the table is {dst / 'metrics/trilemma.md'}, the figure {dst / 'metrics/trilemma.png'}; "
          f"`make repro` runs the real budgets here")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
