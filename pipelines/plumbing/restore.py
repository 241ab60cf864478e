"""Put a failed stage's committed outputs back, so that a failure under `dvc repro` loses nothing.

DVC deletes a stage's outputs before it runs the command, and commits new ones only when the
command succeeds. A stage that then fails (a diverged training run, a corrupt input, an
interrupt) would leave its previous outputs deleted, recoverable only by `dvc checkout`. DVC
tells the command which stage it runs (DVC_STAGE, DVC_ROOT); the outputs that dvc.lock records
for that stage are in the DVC cache, and `restore_outputs` copies them back into place.

`persist: true` would keep outputs in place too, but DVC then stops using its run-cache for
the stage, which the pipeline relies on (a reverted param restores without rerunning, and
hosts share stages through `dvc push --run-cache`).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import yaml

from pipelines.plumbing.atomic import atomic_write_bytes


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _restore_file(path: Path, md5: str, cache) -> bool:
    """Put the cached file `md5` at `path` unless it is there already; whether it was put back."""
    if path.is_file() and _md5(path) == md5:
        return False
    src = Path(cache.oid_to_path(md5))
    if not src.is_file():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, src.read_bytes())  # a copy: the cache's own files are read-only
    return True


def restore_outputs(root: Path, stage: str) -> list[str]:
    """Copy the outputs that `root`/dvc.lock records for `stage` from the DVC cache back into place (a directory
    output file by file, from its manifest).

    Returns the paths restored. An output already present with the recorded hash is left alone,
    and so is one the cache no longer holds (a `dvc gc`).
    """
    lock_path = root / "dvc.lock"
    if not lock_path.exists():
        return []
    entry = (yaml.safe_load(lock_path.read_text()) or {}).get("stages", {}).get(stage)
    if not entry:  # a stage never committed has nothing to restore
        return []
    # the cache's location and layout are DVC's (cache.dir, hash type); imported here, by a failing stage only:
    # dvc.repo takes about 0.5 s to import, and every stage imports this module (pipelines/plumbing/entry.py)
    from dvc.repo import Repo

    repo = Repo(str(root))
    try:
        restored = []
        for out in entry.get("outs", []):
            md5, path = out.get("md5"), root / out["path"]
            cache = repo.cache.local if out.get("hash") == "md5" else repo.cache.legacy
            if not md5:
                continue
            if md5.endswith(".dir"):  # a directory output: its manifest in the cache lists each file's md5
                manifest = Path(cache.oid_to_path(md5))
                files = json.loads(manifest.read_text()) if manifest.is_file() else []
                restored += [f"{out['path']}/{f['relpath']}" for f in files
                             if _restore_file(path / f["relpath"], f["md5"], cache)]
            elif _restore_file(path, md5, cache):
                restored.append(out["path"])
        return restored
    finally:
        repo.close()


def restore_after_failure() -> None:
    """In a stage that `dvc repro` runs and that is failing: restore its committed outputs; warn in one line if that fails."""
    stage, root = os.environ.get("DVC_STAGE"), os.environ.get("DVC_ROOT")
    if not stage or not root or ":" in stage:  # only stages of the root dvc.yaml, the one this project has
        return
    try:
        restore_outputs(Path(root), stage)
    except Exception as e:
        print(f"warning: could not put back {stage}'s committed outputs ({type(e).__name__}: {e}); "
              f"`dvc checkout {stage}` restores them", file=sys.stderr)
