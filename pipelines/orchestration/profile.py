"""Profiles: the one DAG (dvc.yaml) run on another data set and budget, in a workspace of its own.

    make repro PROFILE=mnist        # python -m pipelines.orchestration.profile mnist
    python -m pipelines.orchestration.profile NAME [--dir DIR] [--overlay FILE.yaml] [--external DIR] [--cache DIR] [--prepare-only]

The embedded default, the 25-Gaussians toy, runs in the repository itself (`make repro`). A profile is a file
`profiles/<NAME>.yaml`: `merge` (merged into params.yaml key by key), `replace` (sections replaced whole) and
optionally `claims` (the claims file its claims stage checks, in place of claims.yaml) and `base` (another profile
whose params this one starts from, its claims file too unless this one names its own: `mnist-conditional` is
`mnist`'s data, networks and training with other cells, so the stages they share run once for both). Its run lives in
`runs/<NAME>/` (git-ignored): a copy of the checkout's files, synced at every call, with the profile's params.yaml
and claims.yaml, its own dvc.lock and outputs, and DVC's cache shared with the repository's. So:

- no stage is declared twice: every profile runs the same dvc.yaml, and its params pass the same loader
  (pipelines/params/) before any stage runs; the profile file and params.yaml are read by the same strict reader
  (a key given twice is an error naming the file and the line);
- switching profiles recomputes nothing: each keeps its outputs, and a stage DVC has run before with the same code,
  data and params is restored from the shared run cache, not rerun;
- MLflow keeps runs apart by profile: they go to the repository's store (unless MLFLOW_TRACKING_URI says otherwise),
  in the experiment `trilemma-<NAME>` (unless MLFLOW_EXPERIMENT_NAME says otherwise); `.trilemma-tracking.json` in
  the workspace records both, so a `dvc repro` run by hand inside it logs to the same place.

It runs `dvc repro claims`: the claims stage and what it depends on, so stages whose models no cell of the profile
samples (the noise-aware classifier without guided cells, the 2015 model without its cells) do not run.
`make demo` is the profile `demo` in a fresh scratch workspace (pipelines/orchestration/demo.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from pipelines.params import ParamsError, parse_params
from pipelines.params.environment import check_environment
from pipelines.params.fields import EXTERNAL_DIR
from pipelines.params.reader import read_yaml
from pipelines.plumbing.tracking_store import PROFILE_TRACKING

ROOT = Path(__file__).resolve().parents[2]
PROFILES = "profiles"
RUNS = "runs"
KEYS = ("description", "base", "merge", "replace", "claims")


class ProfileError(ValueError):
    """A profile file that cannot be used; the message names the file."""


def merge(base: dict, over: dict) -> dict:
    """`over` merged into `base` key by key; a network's options are replaced whole (another network's keys differ)."""
    out = dict(base)
    for k, v in over.items():
        nested = isinstance(v, dict) and isinstance(base.get(k), dict) and k not in ("network", "generator",
                                                                                      "discriminator")
        out[k] = merge(base[k], v) if nested else v
    return out


def load_profile(name_or_path: str, root: Path = ROOT, _below: tuple[str, ...] = ()) -> dict:
    """profiles/<name>.yaml (or a path to a profile file), read strictly and checked for its keys, with its `layers`:
    the merge and replace of its base profiles, then its own. ProfileError (or the reader's ParamsError: a key given
    twice, YAML that does not parse) names the file."""
    path = Path(name_or_path) if name_or_path.endswith(".yaml") else root / PROFILES / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (root / PROFILES).glob("*.yaml"))
        raise ProfileError(f"{path}: no such profile; allowed: {', '.join(known)}")
    doc = read_yaml(path)
    if not isinstance(doc, dict) or any(k not in KEYS for k in doc):
        raise ProfileError(f"{path}: expected a mapping with keys {', '.join(KEYS)}")
    for key in ("merge", "replace"):
        if not isinstance(doc.get(key, {}), dict):
            raise ProfileError(f"{path}: {key}: expected a mapping of params.yaml sections")
    if "claims" in doc and not (root / doc["claims"]).is_file():
        raise ProfileError(f"{path}: claims: {doc['claims']} does not exist")
    own = {"merge": doc.get("merge", {}), "replace": doc.get("replace", {})}
    doc["layers"] = [own]
    if "base" in doc:
        base = doc["base"]
        if not isinstance(base, str) or base.endswith(".yaml") or base in (*_below, path.stem):
            raise ProfileError(f"{path}: base: expected the name of another profile, not itself or one based on "
                               f"it; got {base!r}")
        parent = load_profile(base, root, (*_below, path.stem))
        doc["layers"] = [*parent["layers"], own]
        if "claims" in parent:
            doc.setdefault("claims", parent["claims"])
    return doc


def profile_params(profile: dict, root: Path = ROOT, overlay: dict | None = None) -> dict:
    """root's params.yaml with the profile's `merge` merged in and its `replace` sections replaced (its base
    profiles' first), then the same for `overlay` (a profile's `merge` and `replace`: smaller budgets for a test)."""
    params = read_yaml(root / "params.yaml")
    for layer in (*profile.get("layers", [profile]), *(overlay or {}).get("layers", [overlay or {}])):
        params = {**merge(params, layer.get("merge", {})), **layer.get("replace", {})}
    return params


def write_params(repo: Path, overrides: dict, replace: dict | None = None, root: Path = ROOT) -> None:
    """`root`'s params.yaml with `overrides` merged in and the sections of `replace` replaced whole, into `repo`."""
    doc = profile_params({"merge": overrides, "replace": replace or {}}, root)
    (repo / "params.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))


def checkout_files(root: Path = ROOT) -> list[str]:
    """The checkout's files: tracked, and untracked ones git does not ignore."""
    return subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=root, capture_output=True, text=True,
                          check=True).stdout.splitlines()


def scratch_copy(dst: Path, root: Path = ROOT) -> list[str]:
    """`root`'s files (tracked, and untracked ones git does not ignore) copied into `dst`, replacing changed ones;
    returns their paths. A `.gitignore` already there keeps its lines and gains root's: DVC lists the outputs a run
    made in them, and losing a line would put an output under git."""
    files = checkout_files(root)
    for f in files:
        src, out = root / f, dst / f
        if not src.is_file() or (out.is_file() and out.read_bytes() == src.read_bytes()):
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.name == ".gitignore" and out.is_file():
            have = out.read_text().splitlines()
            out.write_text("\n".join(have + [line for line in src.read_text().splitlines() if line not in have]) + "\n")
        else:
            shutil.copy2(src, out)
    return files


def commit(repo: Path, message: str, files: list[str] | None = None) -> None:
    """`repo` as a git repository holding `files` (default: all it has) in a commit (DVC's lock and experiments need
    one)."""
    git = ["git", "-c", "user.name=trilemma", "-c", "user.email=trilemma@localhost"]
    if not (repo / ".git").exists():
        subprocess.run(git + ["init", "-q"], cwd=repo, check=True, capture_output=True)
    add = ["add", "-A"] if files is None else ["add", "--", *files]
    for cmd in (add, ["commit", "-qm", message, "--allow-empty"]):
        subprocess.run(git + cmd, cwd=repo, check=True, capture_output=True)


def workspace(name: str, dst: Path, profile: dict, root: Path = ROOT, overlay: dict | None = None,
              external: Path | None = None, cache: Path | None = None) -> dict[str, str]:
    """Build or sync profile `name`'s workspace `dst`; return the environment its stages run in.

    `external` (default: root's data/external) is linked in as its data/external, `cache` (default: root's DVC
    cache) is its DVC cache. Params are validated (the one loader) before anything in `dst` changes.
    """
    external = (external or root / EXTERNAL_DIR).resolve()
    params = profile_params(profile, root, overlay)
    check_environment(parse_params(params, f"profile {name}"), external)
    dst.mkdir(parents=True, exist_ok=True)
    files = scratch_copy(dst, root)
    (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    if "claims" in profile:
        shutil.copy2(root / profile["claims"], dst / "claims.yaml")
    link = dst / EXTERNAL_DIR
    if not (link.is_symlink() and link.resolve() == external):
        if link.is_symlink():
            link.unlink()
        shutil.rmtree(link, ignore_errors=True)
        link.symlink_to(external, target_is_directory=True)
    env = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    tracking = {"MLFLOW_TRACKING_URI": os.environ.get("MLFLOW_TRACKING_URI")
                or f"sqlite:///{(root / 'mlflow.db').resolve()}",
                "MLFLOW_EXPERIMENT_NAME": os.environ.get("MLFLOW_EXPERIMENT_NAME") or f"trilemma-{name}"}
    (dst / PROFILE_TRACKING).write_text(json.dumps(tracking, indent=1) + "\n")
    inside = [f for f in files if (dst / f).is_file() and (dst / f).resolve().is_relative_to(dst.resolve())]
    commit(dst, f"profile {name}", inside + ["params.yaml", "claims.yaml", PROFILE_TRACKING])  # not data/external
    cache = (cache or root / ".dvc" / "cache").resolve()
    subprocess.run([sys.executable, "-m", "dvc", "cache", "dir", "--local", str(cache)], cwd=dst, check=True,
                   capture_output=True)
    return {**os.environ, **env, **tracking}


def run_dag(dst: Path, env: dict[str, str], done: str, targets: tuple[str, ...] = ("claims",)) -> int:
    """`dvc repro <targets>` in `dst`, then the MLflow flush and the claims summary; the first failing exit code, or
    0 after printing `done` (where the results are)."""
    for cmd in (["dvc", "repro", *targets], ["pipelines.plumbing.tracking", "flush"],
                ["pipelines.stages.claims", "summary", "metrics/claims.json"]):
        code = subprocess.run([sys.executable, "-m", *cmd], cwd=dst, env=env).returncode
        if code != 0:
            return code
    print(done)
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.orchestration.profile", description=__doc__.splitlines()[0])
    parser.add_argument("name", help="profiles/<name>.yaml")
    parser.add_argument("--dir", type=Path, help="the workspace (default: runs/<name>/)")
    parser.add_argument("--overlay", help="a profile file (merge, replace) applied after the profile's own")
    parser.add_argument("--external", type=Path,
                        help=f"the folder linked in as {EXTERNAL_DIR} (default: the repository's)")
    parser.add_argument("--cache", type=Path, help="its DVC cache (default: the repository's, .dvc/cache)")
    parser.add_argument("--prepare-only", action="store_true", help="build or sync the workspace, run nothing")
    args = parser.parse_args(argv)
    try:
        profile = load_profile(args.name)
        overlay = load_profile(args.overlay) if args.overlay else None
        dst = (args.dir or ROOT / RUNS / args.name).resolve()
        env = workspace(args.name, dst, profile, ROOT, overlay, args.external, args.cache)
    except (ProfileError, ParamsError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"profile {args.name}: {profile.get('description', '').strip()}\nworkspace {dst}; MLflow experiment "
          f"{env['MLFLOW_EXPERIMENT_NAME']}", flush=True)
    if args.prepare_only:
        return 0
    return run_dag(dst, env, f"profile {args.name}: the table is {dst / 'metrics/trilemma.md'}, the claims "
                             f"{dst / 'metrics/claims.md'}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
