"""Probe a fully built checkout as a hostile but fair user would, and print what each fault cost.

    python benchmarks/fault_probes.py <built checkout> [--only SUBSTRING ...] [--keep]

Each probe runs on a fresh copy of the checkout (the checkout itself is never touched): it
breaks one thing (a param, a data file, a checkpoint, the MLflow store) or kills a stage, runs
what a user would run (`dvc repro`, a single stage, `make repro`'s params check), and reports the
exit status, the seconds until the command returned, the error line, and whether any output
that dvc.lock records (or dvc.lock itself, beyond the validate stage's entry) the command changed. The
checkout must be built (`dvc repro` finished) with the venv's bin first on PATH.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import yaml


def md5(path: Path) -> str | None:
    return hashlib.md5(path.read_bytes()).hexdigest() if path.is_file() else None


def snapshot(repo: Path) -> tuple[dict, dict]:
    """dvc.lock's stage entries, and the bytes (md5) of every output they record as the workspace holds them."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    return lock, {o["path"]: md5(repo / o["path"]) for entry in lock.values() for o in entry.get("outs", [])}


def changed_outputs(repo: Path, before: tuple[dict, dict]) -> list[str]:
    """The outputs the command deleted or rewrote (other than back to their committed bytes), and the stages whose lock
    entry it changed (but validate's, which records the params.yaml it checked)."""
    (lock, files), (lock_after, files_after) = before, snapshot(repo)
    committed = {o["path"]: o["md5"] for entry in lock.values() for o in entry.get("outs", [])}
    changed = [f"dvc.lock:{s}" for s in lock if s != "validate" and lock_after.get(s) != lock[s]]
    return changed + [path for path, digest in files.items() if files_after.get(path) not in (digest, committed[path])]


def set_param(*key, value) -> Callable[[Path], None]:
    def change(repo: Path) -> None:
        raw = yaml.safe_load((repo / "params.yaml").read_text())
        node = raw
        for k in key[:-1]:
            node = node[k]
        node[key[-1]] = value
        (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return change


def add_cell(name: str) -> Callable[[Path], None]:
    return set_param("sweep", name, value={"model": "ddpm", "sampler": "ddim", "steps": 4, "eta": 0.0})


def edit_bytes(rel: str, edit: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    return lambda repo: (repo / rel).write_bytes(edit((repo / rel).read_bytes()))


def edit_x(edit: Callable[[np.ndarray], np.ndarray]) -> Callable[[Path], None]:
    def change(repo: Path) -> None:
        path = repo / "data/train.npz"
        with np.load(path) as f:
            arrays = {k: f[k] for k in f.files}
        arrays["x"] = edit(arrays["x"])
        with open(path, "wb") as f:
            np.savez(f, **arrays)
    return change


def lock_mlflow(repo: Path) -> subprocess.Popen:
    code = (f"import sqlite3, time; c = sqlite3.connect({str(repo / 'mlflow.db')!r}, isolation_level=None); "
            f"c.execute('BEGIN EXCLUSIVE'); print('held', flush=True); time.sleep(600)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    holder.stdout.readline()
    return holder


class Payload:
    """Pickled code: unpickling runs `touch <marker>`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


DVC = ["dvc", "repro"]
ONE = ["dvc", "repro", "--single-item"]
CHECK = [sys.executable, "-m", "pipelines.params"]
MARKER = Path(tempfile.gettempdir()) / "trilemma-probe-injected"

# name -> (what it breaks, the command a user runs)
PROBES: dict[str, tuple[Callable[[Path], object], list[str]]] = {
    f"cell name 'x$(touch {MARKER})'": (add_cell(f"x$(touch {MARKER})"), DVC),
    f"cell name 'x$(touch {MARKER})', dvc repro -s on it (skips validate)":
        (add_cell(f"x$(touch {MARKER})"), [*DVC, "-s", f"sample@x$(touch {MARKER})"]),
    f"cell name 'x;touch {MARKER}', dvc repro --single-item on it (skips validate)":
        (add_cell(f"x;touch {MARKER}"), [*ONE, f"sample@x;touch {MARKER}"]),
    "cell name 'a/b'": (add_cell("a/b"), DVC),
    "cell name '/tmp/escape'": (add_cell("/tmp/escape"), DVC),
    "cell name 'my cell'": (add_cell("my cell"), DVC),
    "cell name of 300 characters": (add_cell("a" * 300), DVC),
    "train_ddpm.lr: 1e6 (diverges)": (set_param("train_ddpm", "lr", value=1e6), DVC),
    "train_ddpm.lr: inf": (set_param("train_ddpm", "lr", value=float("inf")), DVC),
    "data.std: inf": (set_param("data", "std", value=float("inf")), DVC),
    "sweep.ddim-50.eta: inf": (set_param("sweep", "ddim-50", "eta", value=float("inf")), DVC),
    "guided_sweep.ddim-50-s1.scale: inf": (set_param("guided_sweep", "ddim-50-s1", "scale", value=float("inf")), DVC),
    "exact_sweep.exact-ddim-50-s1.scale: 1e300 (samples explode)":
        (set_param("exact_sweep", "exact-ddim-50-s1", "scale", value=1e300), DVC),
    "data.seed: -1": (set_param("data", "seed", value=-1), DVC),
    "data.seed: 2^64": (set_param("data", "seed", value=2**64), DVC),
    "evaluate.k: 20000 (> n)": (set_param("evaluate", "k", value=20000), DVC),
    "params.yaml: duplicated key (make repro's check)": (edit_bytes("params.yaml", lambda b: b + b"data:\n  seed: 1\n"), CHECK),
    "params.yaml: duplicated key (dvc repro)": (edit_bytes("params.yaml", lambda b: b + b"data:\n  seed: 1\n"), DVC),
    "params.yaml: non-UTF-8 byte (make repro's check)": (edit_bytes("params.yaml", lambda b: b + b"# caf\xe9\n"), CHECK),
    "params.yaml: a list (make repro's check)": (edit_bytes("params.yaml", lambda b: b"- data\n- sweep\n"), CHECK),
    "models/ddpm.pt truncated, dvc repro": (edit_bytes("models/ddpm.pt", lambda b: b[: len(b) // 2]), DVC),
    "models/ddpm.pt truncated, sample@ddim-50 alone": (edit_bytes("models/ddpm.pt", lambda b: b[: len(b) // 2]),
                                                       [*ONE, "sample@ddim-50"]),
    "models/ddpm.pt pickled code, sample@ddim-50 alone":
        (lambda repo: __import__("torch").save({"ema": Payload(MARKER)}, repo / "models/ddpm.pt"), [*ONE, "sample@ddim-50"]),
    "train.npz x with 3 columns, train_ddpm alone": (edit_x(lambda x: np.concatenate([x, x[:, :1]], 1)),
                                                     [*ONE, "train_ddpm"]),
    "train.npz 1-D x": (edit_x(lambda x: x.reshape(-1)), [*ONE, "train_ddpm"]),
    "train.npz string x": (edit_x(lambda x: x.astype(str)), [*ONE, "train_ddpm"]),
    "train.npz empty x": (edit_x(lambda x: x[:0]), [*ONE, "train_ddpm"]),
    "train.npz int64 x": (edit_x(lambda x: x.astype(np.int64)), [*ONE, "train_ddpm"]),
    "train.npz float16 x": (edit_x(lambda x: x.astype(np.float16)), [*ONE, "train_ddpm"]),
    "train.npz all-NaN x": (edit_x(lambda x: np.full_like(x, np.nan)), [*ONE, "train_ddpm"]),
    "mlflow.db corrupt, prepare": (edit_bytes("mlflow.db", lambda b: os.urandom(len(b))), [*ONE, "--force", "prepare"]),
    "mlflow.db locked, prepare": (lock_mlflow, [*ONE, "--force", "prepare"]),
    "mlflow.db as it is, prepare (the baseline)": (lambda repo: None, [*ONE, "--force", "prepare"]),
}


def error_line(out: str) -> str:
    lines = [line for line in out.splitlines() if line.startswith(("error: ", "warning: ", "ERROR: "))]
    own = [line for line in lines if not line.startswith("ERROR: failed to reproduce")]
    return (own or lines or [""])[0][:150]


def probe(built: Path, name: str, keep: bool) -> dict:
    change, cmd = PROBES[name]
    MARKER.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(dir=built.parent) as tmp:
        repo = Path(tmp) / "repo"
        shutil.copytree(built, repo, symlinks=True)
        holder = change(repo)
        before = snapshot(repo)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        if isinstance(holder, subprocess.Popen):
            holder.kill()
        row = {"probe": name, "exit": proc.returncode, "seconds": seconds, "line": error_line(proc.stdout + proc.stderr),
               "changed": changed_outputs(repo, before), "injected": MARKER.exists()}
        if keep:
            shutil.copytree(repo, built.parent / f"probe-{abs(hash(name))}", symlinks=True)
    return row


def kill_after_final_checkpoint(built: Path) -> dict:
    """train_ddpm with a new seed; SIGKILL the whole `dvc repro` 1 s after models/ddpm.pt appears (while the stage
    writes its loss curve and logs), then rerun: it must resume at the last step and write the same checkpoint."""
    with tempfile.TemporaryDirectory(dir=built.parent) as tmp:
        repo = Path(tmp) / "repo"
        shutil.copytree(built, repo, symlinks=True)
        set_param("train_ddpm", "seed", value=1)(repo)
        proc = subprocess.Popen([*ONE, "train_ddpm"], cwd=repo, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ckpt = repo / "models/ddpm.pt"
        while ckpt.exists() and proc.poll() is None:  # DVC deletes it first
            time.sleep(0.01)
        while not ckpt.exists() and proc.poll() is None:
            time.sleep(0.01)
        finished = md5(ckpt)  # written atomically: complete once it exists
        time.sleep(1.0)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        t0 = time.perf_counter()
        rerun = subprocess.run([*ONE, "train_ddpm"], cwd=repo, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        resumed = [line for line in rerun.stdout.splitlines() if "resuming from" in line]
        same = "checkpoint byte-identical to the killed run's" if md5(ckpt) == finished else "checkpoint DIFFERS"
        return {"probe": "train_ddpm (new seed) killed -9 1 s after models/ddpm.pt is written; dvc repro again",
                "exit": rerun.returncode, "seconds": seconds, "line": (resumed or ["(no resume)"])[0][:150],
                "changed": [], "note": same, "injected": False}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkout", type=Path)
    ap.add_argument("--only", nargs="*", default=[], help="run the probes whose name contains one of these")
    ap.add_argument("--keep", action="store_true", help="keep each probe's copy beside the checkout")
    a = ap.parse_args()
    built = a.checkout.resolve()
    subprocess.run(["dvc", "status", "--quiet"], cwd=built, check=True)  # built and up to date
    names = [n for n in PROBES if not a.only or any(s in n for s in a.only)]
    rows = []
    for name in names:
        rows.append(probe(built, name, a.keep))
        print(f"{name}: exit {rows[-1]['exit']} in {rows[-1]['seconds']:.1f} s", file=sys.stderr, flush=True)
    if not a.only or any(s in "kill" for s in a.only):
        rows.append(kill_after_final_checkpoint(built))
    print("| probe | exit | seconds | outputs changed | what it printed |")
    print("|---|---|---|---|---|")
    for r in rows:
        changed = r.get("note") or ("none" if not r["changed"] else f"{len(r['changed'])}: {', '.join(r['changed'][:3])}")
        injected = " **(shell code ran)**" if r["injected"] else ""
        print(f"| {r['probe']} | {r['exit']} | {r['seconds']:.1f} | {changed}{injected} | `{r['line']}` |")


if __name__ == "__main__":
    main()
