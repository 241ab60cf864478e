"""dvc.yaml's code dependencies, derived from the import graph so that they cannot drift.

    python -m pipelines.orchestration.stage_deps          # rewrite every stage's code deps in dvc.yaml
    python -m pipelines.orchestration.stage_deps --check  # exit 1, naming each stage that differs

A stage's code is the module its cmd runs (`python -m <module> ...`) and every project module that module imports,
at any depth, read from the source (every `import` and `from ... import` in the file, a function body's too), so a
change to a module reruns exactly the stages that import it. Modules under PLUMBING are left out and not followed:
they write, log and parse, and change no number a stage computes (tests/pipelines/orchestration/test_dag.py runs one
stage of each kind under a tracer and fails on a module it loads that this derivation misses). A package's `__init__.py` counts when
it holds code. The other deps (data, models, folders) are kept in their order after the code.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("components", "pipelines")  # the project's top-level packages; anything else is a library
PLUMBING = ("pipelines/plumbing/", "pipelines/params/", "pipelines/plots/")  # folders, or files
REGISTERED = re.compile(r"((?:components|pipelines)(?:\.\w+)+):\w+")  # a registry's "module:attribute" string


def plumbing(path: str) -> bool:
    """Whether checkout-relative `path` is plumbing: listed in PLUMBING, or inside a folder listed there (`x/`)."""
    return path in PLUMBING or any(path.startswith(p) for p in PLUMBING if p.endswith("/"))


COMMAND = re.compile(r"python -m ([\w.]+)")


def module_file(name: str, root: Path) -> Path | None:
    """The file that defines module `name` (`a.b` -> a/b.py or a/b/__init__.py), or None outside the project."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = root.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def imported_modules(path: Path, root: Path) -> set[str]:
    """The project modules `path` imports by name: `import a.b`, `from a.b import c` (c itself when it is a
    module), and the packages on the way (a, a.b), whose __init__.py runs first."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and REGISTERED.fullmatch(node.value):
            names.add(node.value.split(":")[0])
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    out = set()
    for name in names:
        parts = name.split(".")
        out.update(".".join(parts[:i]) for i in range(1, len(parts) + 1) if module_file(".".join(parts[:i]), root))
    return out


def relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def code_deps(module: str, root: Path = ROOT) -> list[str]:
    """The stage module's file first, then every project file it imports at any depth (not through PLUMBING), sorted;
    empty __init__.py files and PLUMBING left out."""
    own = module_file(module, root)
    if own is None:
        raise SystemExit(f"stage_deps: module {module} is not a file of this checkout")
    if own.name == "__init__.py" and (own.parent / "__main__.py").is_file():
        own = own.parent / "__main__.py"  # `python -m <package>` runs its __main__
    home = relative(own.parent, root) + "/" if own.name == "__main__.py" else None  # a package's own files count
    seen, todo = {own}, [own]
    while todo:
        path = todo.pop()
        if plumbing(relative(path, root)) and path != own and not (home and relative(path, root).startswith(home)):
            continue
        for name in imported_modules(path, root):
            dep = module_file(name, root)
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    rest = sorted(relative(p, root) for p in seen - {own} if counted(p, root, home))
    return [relative(own, root), *rest]


def stage_bodies(stages: dict):
    """(name, the mapping holding cmd and deps) for each stage; a foreach stage's body is its `do`."""
    for name, stage in stages.items():
        yield name, stage["do"] if "do" in stage else stage


def counted(path: Path, root: Path, home: str | None) -> bool:
    """Whether `path` is a dep: not plumbing (unless in the stage's own package `home`), not an empty __init__.py."""
    rel = relative(path, root)
    if plumbing(rel) and not (home and rel.startswith(home)):
        return False
    return not (path.name == "__init__.py" and not path.read_text().strip())


def derive(doc: dict, root: Path = ROOT) -> dict[str, list[str]]:
    """Stage name -> its deps as they should be: the derived code first, then its other deps in their order."""
    out = {}
    for name, body in stage_bodies(doc["stages"]):
        match = COMMAND.search(" ".join(str(body["cmd"]).split()))
        if match is None:
            raise SystemExit(f"stage_deps: stage {name}'s cmd runs no `python -m <module>`")
        other = [str(d) for d in body.get("deps", []) if not str(d).endswith(".py")]
        out[name] = [*code_deps(match.group(1), root), *other]
    return out


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines.orchestration.stage_deps",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only compare; exit 1 when dvc.yaml is stale")
    ap.add_argument("--dvc-yaml", type=Path, default=ROOT / "dvc.yaml")
    args = ap.parse_args(argv)
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096  # never rewrap a cmd
    yaml.indent(mapping=2, sequence=4, offset=2)
    doc = yaml.load(args.dvc_yaml.read_text())
    wanted = derive(doc, args.dvc_yaml.parent)
    stale = [name for name, body in stage_bodies(doc["stages"])
             if [str(d) for d in body.get("deps", [])] != wanted[name]]
    if args.check:
        for name in stale:
            print(f"dvc.yaml: stage {name}'s deps are not its imports; "
                  "run `python -m pipelines.orchestration.stage_deps`")
        return 1 if stale else 0
    for name, body in stage_bodies(doc["stages"]):
        if name in stale:
            deps = body["deps"]
            del deps[:]
            deps.extend(wanted[name])
    tmp = args.dvc_yaml.with_name(f".{args.dvc_yaml.name}.tmp")
    with tmp.open("w") as f:
        yaml.dump(doc, f)
    tmp.replace(args.dvc_yaml)
    print(f"dvc.yaml: {len(stale)} stage(s) rewritten" if stale else "dvc.yaml: deps up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
