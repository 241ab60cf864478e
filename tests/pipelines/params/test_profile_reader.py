"""Profiles are read by the one strict reader params.yaml is read by: a key given twice is an error in one line that
names the file, the line and the key, not a value silently dropped (yaml.safe_load keeps the last)."""

import shutil
import sys

import pytest

from pipelines.params import ParamsError
from pipelines.orchestration.profile import load_profile, profile_params

from conftest import ROOT, run

PROFILE = """description: a profile whose merge gives sample twice
merge:
  sample: {n: 64}
  timing: {repeats: 2}
  sample: {n: 32}
"""


def test_profile_with_a_duplicate_key_fails_naming_file_and_key(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text(PROFILE)
    with pytest.raises(ParamsError) as e:
        load_profile(str(path))
    msg = str(e.value)
    assert "\n" not in msg
    assert msg == f"{path}: line 5: duplicate key 'sample' (first given at line 3)"


def test_profile_command_stops_in_one_line_on_a_duplicate_key(tmp_path):
    """`python -m pipelines.orchestration.profile <file>` (what `make repro PROFILE=...` runs) exits 2 with the reader's line."""
    path = tmp_path / "twice.yaml"
    path.write_text(PROFILE)
    proc = run([sys.executable, "-m", "pipelines.orchestration.profile", str(path), "--dir", str(tmp_path / "ws"), "--prepare-only"],
               ROOT, check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: {path}: line 5: duplicate key 'sample' (first given at line 3)"]
    assert not (tmp_path / "ws").exists()  # refused before any workspace is built


def test_params_under_a_profile_are_read_strictly_too(tmp_path):
    """The params.yaml a profile merges into: a duplicate key there fails too, before the merge hides it."""
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    with open(tmp_path / "params.yaml", "a") as f:
        f.write("sample: {n: 8, seed: 0, batch_size: 8}\n")  # `sample` is already a section of the file
    with pytest.raises(ParamsError, match=r"params\.yaml: line \d+: duplicate key 'sample' \(first given at line \d+\)$"):
        profile_params({}, tmp_path)
