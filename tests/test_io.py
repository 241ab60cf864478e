"""Stage plumbing that is not covered through the stages themselves."""

import platform
import subprocess
import sys

import pytest

from conftest import ROOT, stage_env


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_malloc_thresholds_pin_on_glibc():
    """Every stage pins glibc's malloc thresholds (entry_point); mallopt accepts all three settings here."""
    code = "from pipelines.io import pin_malloc_thresholds; print(pin_malloc_thresholds())"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=stage_env(PYTHONPATH=str(ROOT)),
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"
