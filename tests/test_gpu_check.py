"""benchmarks/gpu_check.py on a CPU: its dry runs list every command and check the pieces they name, a missing piece
is one line, and a real run without CUDA stops in one line instead of printing figures."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys

import pytest

from conftest import ROOT, stage_env

SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def gpu_check(*args: str) -> subprocess.CompletedProcess:
    """The script as a user runs it, with no GPU visible (so a real run cannot start on a machine that has one)."""
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=stage_env(CUDA_VISIBLE_DEVICES=""),
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = mod  # its dataclasses resolve their annotations through it
    spec.loader.exec_module(mod)
    yield mod
    del sys.modules["gpu_check"]


def commands(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line and not line.startswith("#")]


def test_the_check_lists_the_cuda_tests_both_profile_runs_and_both_benchmarks():
    proc = gpu_check("--dry-run")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    lines = commands(proc.stdout)
    assert len(lines) == 6 and "get_device_name" in lines[0]
    tests = lines[1].split()
    assert tests[1:3] == ["-m", "pytest"] and any(t.startswith("tests/components/networks/test_runtime.py::") for t in tests)
    for precision in ("fp32", "bf16"):
        run = next(line for line in lines if f"tiny-{precision}.yaml" in line)
        assert " -m pipelines.orchestration.profile mnist --dir " in run and "--cache " in run and "MLFLOW_TRACKING_URI=" in run
    assert lines[4].endswith("benchmarks/sampling_throughput.py --device cuda")
    assert lines[5].endswith("benchmarks/unet_throughput.py --device cuda")
    assert proc.stdout.splitlines()[-1].startswith("# dry run: 6 commands")


def test_the_digits_mode_lists_the_gpu_profile():
    proc = gpu_check("--dry-run", "--digits")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    lines = commands(proc.stdout)
    assert len(lines) == 2 and lines[1].endswith("-m pipelines.orchestration.profile mnist-gpu")


def test_a_missing_profile_is_one_line_naming_it():
    proc = gpu_check("--dry-run", "--profile", "no-such-profile")
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [proc.stderr.strip()] and "no-such-profile.yaml: no such profile" in proc.stderr


def test_a_missing_script_module_or_executable_is_named(module):
    python = sys.executable
    assert module.missing_piece(module.Command((python, "benchmarks/unet_throughput.py"))) is None
    assert module.missing_piece(module.Command((python, "benchmarks/no_such.py"))) == "file benchmarks/no_such.py"
    assert module.missing_piece(module.Command((python, "-m", "pipelines.nope"))) == "python module pipelines.nope"
    assert module.missing_piece(module.Command(("no-such-exe-xyz",))) == "executable no-such-exe-xyz"
    assert module.missing_piece(module.Command((python, "-m", "pytest", "tests/test_nope.py::test_x"))) == \
        "file tests/test_nope.py"
    part = module.Part("x", (module.Command((python, "-m", "pipelines.orchestration.profile"), executables=("no-such-git",)),), 1)
    assert module.first_problem([part], []).startswith("missing: executable no-such-git (on PATH), for: ")


def test_a_profile_the_loader_rejects_is_reported_in_its_words(module, tmp_path):
    over = tmp_path / "bad.yaml"
    over.write_text("merge: {runtime: {precision: fp16}}\n")
    problem = module.check_profile("mnist", over)
    assert problem.startswith("profile mnist: ") and "runtime.precision" in problem and "fp16" in problem
    assert module.check_profile("mnist-gpu", None) is None


def test_the_cuda_tests_are_the_ones_marked_cuda(module):
    """Every test that skips without a GPU carries the `cuda` marker, so the check runs it on one."""
    ids = module.cuda_test_ids(ROOT / "tests")
    assert "tests/components/networks/test_runtime.py::test_a_gpu_run_resumes_exactly_from_a_cpu_loaded_checkpoint_in_bf16_and_channels_last" in ids
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        src = path.read_text()
        for match in re.finditer(r'((?:@pytest\.mark\.\w+.*\n)*)def (test_\w+)', src):
            decorators, name = match.groups()
            if 'not torch.cuda.is_available(), reason="needs a GPU"' in decorators:
                assert f"{path.relative_to(ROOT).as_posix()}::{name}" in ids, name


def test_without_cuda_a_real_run_stops_in_one_line():
    proc = gpu_check()
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: no CUDA device")


def test_parts_run_under_their_limits_and_the_summary_names_each_failure(module, tmp_path, capsys):
    py, table = sys.executable, tmp_path / "table.md"
    parts = [module.Part("writes its table", (module.Command((py, "-c", f"open({str(table)!r}, 'w').write('| a |')"),
                                                             table=table), module.Command((py, "-c", "print(1)"))), 30),
             module.Part("skips a test", (module.Command((py, "-c", "print('1 passed, 1 skipped')")),), 30,
                         forbid=("skipped",)),
             module.Part("exits 3", (module.Command((py, "-c", "raise SystemExit(3)")),), 30),
             module.Part("writes no table", (module.Command((py, "-c", "pass"), table=tmp_path / "none.md"),), 30)]
    assert module.run_all(parts, 60, tmp_path / "logs") == 1
    out = capsys.readouterr().out
    summary = out[out.index("=== summary"):].splitlines()[1:]
    assert [line.split()[0] for line in summary] == ["pass", "FAIL", "FAIL", "FAIL"]
    assert "'skipped'" in summary[1] and "exit status 3" in summary[2] and "no table" in summary[3]
    assert f"--- {table}:\n| a |" in out  # a table is printed after its command

    slow = module.Part("sleeps", (module.Command((py, "-c", "import time; time.sleep(60)")),), 30)
    outcome, seconds = module.run_part(slow, 1, tmp_path / "logs", 9)
    assert outcome.startswith("FAIL: timed out after 1 s") and seconds < 30
