"""Where the default run's time goes: each stage's wall time in a from-scratch `dvc repro -f`, and its fixed cost.

    python benchmarks/stage_times.py [--repo PATH] [--out times.json] [--probe-only] [--keep DIR]

Clones `--repo` (default: this checkout) at HEAD into a temporary folder beside a link to its
.venv, so it measures committed code exactly as a fresh clone runs it; run it on main and on a
branch back to back, with nothing else running, and compare the two (the machine's speed moves
by up to 30% between days). It prints:

- the fixed cost of a stage, in fresh processes (median of 5): starting Python and importing each
  stage module, and queueing or logging one MLflow run as a stage does. Works on any checkout.
- the wall time of every stage and of the whole `dvc repro -f`, read from DVC's "Running stage"
  lines as they stream (a stage's time runs to the next stage's start, so it includes DVC's own
  work for it: hashing, caching, writing dvc.lock).
- where the stage's process reports it (pipelines/entry.entry_point writes TRILEMMA_STAGE_TIMES), the
  split of each stage into start-up (process start to main), main, and the rest; fixed cost = wall - main.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNNING = re.compile(r"Running stage '([^']+)'")
LOG_PROBE = ("from pipelines.plumbing.tracking import StageRun, log_stage_run; "
             "log_stage_run(StageRun('probe', params={'a': 1}, metrics={'x': 1.0}))")


def timed(cmd: list[str], cwd: Path, env: dict[str, str], repeats: int = 5) -> float:
    """Median wall seconds of `cmd` over `repeats` runs."""
    walls = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True)
        walls.append(time.perf_counter() - t0)
    return statistics.median(walls)


def stage_modules(repo: Path) -> list[str]:
    """The distinct `python -m <module>` of dvc.yaml's stages, in file order."""
    return list(dict.fromkeys(re.findall(r"python -m (pipelines\.\w+)", (repo / "dvc.yaml").read_text())))


def probe_fixed_cost(repo: Path, env: dict[str, str]) -> dict:
    """Interpreter start, each stage module's imports, and one tracked run, each in a fresh process."""
    python = str(repo / ".venv/bin/python")
    bare = timed([python, "-c", "pass"], repo, env)
    imports = {m: timed([python, "-c", f"import {m}"], repo, env) - bare for m in stage_modules(repo)}
    with tempfile.TemporaryDirectory() as store:
        tracking_env = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{store}/mlflow.db"}
        timed([python, "-c", LOG_PROBE], repo, tracking_env, repeats=1)  # creates the store: not a stage's cost
        log = timed([python, "-c", LOG_PROBE], repo, tracking_env) - timed(
            [python, "-c", "import pipelines.plumbing.tracking"], repo, tracking_env)
    return {"python_s": bare, "import_s": imports, "log_run_s": log}


def run_repro(repo: Path, env: dict[str, str]) -> tuple[float, list[tuple[str, float]], list[dict]]:
    """`dvc repro -f` from scratch: total seconds, (stage, seconds) in run order, and the stages' own reports."""
    times_file = repo / ".stage-times.jsonl"
    times_file.unlink(missing_ok=True)
    env = {**env, "TRILEMMA_STAGE_TIMES": str(times_file)}
    marks: list[tuple[str, float]] = []
    t0 = time.perf_counter()
    with subprocess.Popen([str(repo / ".venv/bin/dvc"), "repro", "-f"], cwd=repo, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True) as proc:
        for line in proc.stdout:
            m = RUNNING.search(line)
            if m:
                marks.append((m.group(1), time.perf_counter()))
    total = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"dvc repro -f failed ({proc.returncode}) in {repo}")
    ends = [t for _, t in marks[1:]] + [t0 + total]
    stages = [(name, end - start) for (name, start), end in zip(marks, ends)]
    reports = [json.loads(line) for line in times_file.read_text().splitlines()] if times_file.exists() else []
    return total, stages, reports


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", type=Path, default=ROOT, help="checkout to clone and measure (default: this one)")
    ap.add_argument("--out", type=Path, help="write the figures as JSON here")
    ap.add_argument("--probe-only", action="store_true", help="only the fixed-cost probe, no full run")
    ap.add_argument("--keep", type=Path, help="clone here and keep it (its table, plots, MLflow store) afterwards")
    args = ap.parse_args()
    src = args.repo.resolve()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "TRILEMMA_"))}
    with tempfile.TemporaryDirectory(prefix="stage-times-") as tmp:
        repo = args.keep.resolve() if args.keep else Path(tmp) / "repo"
        subprocess.run(["git", "clone", "-q", str(src), str(repo)], check=True)
        (repo / ".venv").symlink_to(src / ".venv")
        env["PATH"] = f"{repo / '.venv/bin'}{os.pathsep}{env.get('PATH', '')}"
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True,
                                text=True).stdout.strip()
        print(f"# {src} at {commit}")
        probe = probe_fixed_cost(repo, env)
        print(f"python start-up {probe['python_s']:.3f} s; one tracked run {probe['log_run_s']:.3f} s; imports:")
        for module, s in probe["import_s"].items():
            print(f"  {module:32s} {s:6.3f} s")
        out = {"commit": commit, "probe": probe}
        if not args.probe_only:
            total, stages, reports = run_repro(repo, env)
            own = {r["stage"]: r for r in reports}
            print(f"\n{'stage':36s} {'wall s':>8s} {'startup':>8s} {'main':>8s} {'fixed':>8s}")
            rows = []
            for name, wall in stages:
                r = own.get(name)
                main_s = r["main_end"] - r["main_start"] if r else None
                row = {"stage": name, "wall_s": round(wall, 3)}
                if r:
                    row |= {"startup_s": round(r["main_start"] - r["started"], 3), "main_s": round(main_s, 3),
                            "fixed_s": round(wall - main_s, 3)}
                rows.append(row)
                cols = [f"{row.get(k, float('nan')):8.2f}" for k in ("startup_s", "main_s", "fixed_s")]
                print(f"{name:36s} {wall:8.2f} {' '.join(cols)}")
            fixed = [r["fixed_s"] for r in rows if "fixed_s" in r]
            print(f"\ntotal {total:.1f} s ({total / 60:.1f} min), {len(stages)} stages"
                  + (f"; fixed cost per stage: median {statistics.median(fixed):.2f} s, sum {sum(fixed):.1f} s"
                     if fixed else ""))
            out |= {"total_s": round(total, 1), "stages": rows}
        if args.out:
            args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
