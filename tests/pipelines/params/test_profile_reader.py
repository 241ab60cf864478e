"""Profiles are read by the one strict reader params.yaml is read by: a key given twice is an error in one line that
names the file, the line and the key, not a value silently dropped (yaml.safe_load keeps the last)."""

import shutil
import sys

import pytest

from pipelines.params import ParamsError
from pipelines.orchestration.profile import ProfileError, load_profile, profile_params

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


def test_a_profile_starts_from_its_base_and_a_cycle_is_refused(tmp_path):
    """`base: <profile>`: the base's merge and replace first, then the profile's own; its claims file unless it
    names one. A profile that is its own base, directly or not, is one line naming the file."""
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "profiles").mkdir()
    (tmp_path / "claims-a.yaml").write_text("")
    (tmp_path / "profiles/a.yaml").write_text("claims: claims-a.yaml\nmerge:\n  sample: {n: 64, seed: 3}\n"
                                              "replace:\n  exact_sweep: {}\n")
    (tmp_path / "profiles/b.yaml").write_text("base: a\nmerge:\n  sample: {n: 32}\n")
    b = load_profile("b", tmp_path)
    assert b["claims"] == "claims-a.yaml"
    params = profile_params(b, tmp_path)
    assert params["sample"]["n"] == 32 and params["sample"]["seed"] == 3 and params["exact_sweep"] == {}
    (tmp_path / "profiles/a.yaml").write_text("base: b\n")
    with pytest.raises(ProfileError, match=r"a\.yaml: base: expected the name of another profile.*'b'$"):
        load_profile("b", tmp_path)
