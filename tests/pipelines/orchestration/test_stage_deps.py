"""dvc.yaml's code deps are the import graph's (pipelines/orchestration/stage_deps.py), so they drift neither way."""

from __future__ import annotations

from pathlib import Path

from conftest import ROOT
from pipelines.orchestration import stage_deps


def test_dvc_yaml_deps_are_the_stages_imports(capsys):
    """Fails when a stage lists a module it does not import or misses one it does: rerun the derivation."""
    assert stage_deps.main(["--check"]) == 0, capsys.readouterr().out


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


TOY = {
    "components/__init__.py": "",
    "components/a.py": "import numpy\nfrom components import b\n",
    "components/b.py": "def f():\n    from components.c import g  # a function body's import counts\n",
    "components/c.py": "",
    "components/unused.py": "",
    "components/kit/__init__.py": "X = 1\n",  # a package whose __init__ holds code
    "components/kit/d.py": "",
    "pipelines/__init__.py": "",
    "components/reg.py": "NAMES = {'c': 'components.c:g'}\n",  # a registry's "module:attribute" names its module
    "pipelines/plumbing/__init__.py": "",
    "pipelines/plumbing/io.py": "import components.unused\n",  # plumbing: not listed, not followed
    "pipelines/s.py": "import components.a\nfrom components.kit.d import y\nfrom pipelines.plumbing import io\n",
    "pipelines/pkg/__init__.py": "",
    "pipelines/pkg/__main__.py": "from pipelines.plumbing import io\nimport components.reg\n",  # `python -m` a package
}
DVC = """\
stages:
  s:  # a comment that stays
    cmd: python -m pipelines.s data/in.npz out.npz
    deps:
      - data/in.npz
      - components/unused.py
    outs:
      - out.npz
  cells:
    foreach: [x, y]
    do:
      cmd: >-
        python -m pipelines.s
        data/in.npz ${item}.npz
      deps:
        - pipelines/s.py
        - components/a.py
        - components/b.py
        - components/c.py
        - components/kit/__init__.py
        - components/kit/d.py
        - data/in.npz
"""


def test_derivation_follows_imports_at_any_depth_not_into_plumbing(tmp_path):
    root = write(tmp_path, TOY)
    assert stage_deps.code_deps("pipelines.s", root) == [
        "pipelines/s.py", "components/a.py", "components/b.py", "components/c.py", "components/kit/__init__.py",
        "components/kit/d.py"]


def test_a_package_stage_runs_its_main_and_counts_the_modules_a_registry_names(tmp_path):
    root = write(tmp_path, TOY)
    assert stage_deps.code_deps("pipelines.pkg", root) == [  # plumbing neither listed nor followed
        "pipelines/pkg/__main__.py", "components/c.py", "components/reg.py"]


def test_check_names_a_stale_extra_and_a_missing_dep_and_the_rewrite_fixes_both(tmp_path, capsys):
    root = write(tmp_path, {**TOY, "dvc.yaml": DVC})
    args = ["--dvc-yaml", str(root / "dvc.yaml")]
    assert stage_deps.main(["--check", *args]) == 1
    out = capsys.readouterr().out
    assert "stage s's deps are not its imports" in out  # an extra (unused.py) and missing modules
    assert "stage cells" not in out  # a foreach stage whose deps are right, in the derived order
    assert stage_deps.main(args) == 0
    text = (root / "dvc.yaml").read_text()
    assert "# a comment that stays" in text and "components/unused.py" not in text
    assert stage_deps.main(["--check", *args]) == 0
    (root / "components/c.py").write_text("import components.unused\n")  # a new import makes the file stale
    assert stage_deps.main(["--check", *args]) == 1


def test_plumbing_names_folders_of_the_checkout():
    """A PLUMBING entry that names nothing (a folder moved or renamed) would leave its successor out silently."""
    assert all((ROOT / p).is_dir() if p.endswith("/") else (ROOT / p).is_file() for p in stage_deps.PLUMBING)
