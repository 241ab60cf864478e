"""A stage's entry point and its arguments: the process around a stage's main(argv).

`entry_point` pins malloc, turns SIGINT and SIGTERM into an interrupt, removes stale temporaries of the paths it
writes, and ends a failure in one line (putting back under `dvc repro` the outputs DVC deleted); for a training
stage, it runs main as params runtime.processes torchrun ranks where that is more than one
(pipelines/plumbing/distributed.py). The rest reads what dvc.yaml hands a stage: its positional paths and its item in
DVC_STAGE.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Callable

from pipelines.plumbing.atomic import remove_stale_temporaries
from pipelines.plumbing.errors import InputError, NonFiniteError, ParamsError, RanksFailed
from pipelines.plumbing.malloc import pin_malloc_thresholds
from pipelines.plumbing.restore import restore_after_failure
from pipelines.plumbing.tracking_spool import process_start_ms

# What a stage reports in one line on stderr, with exit status 2: the user's params, files or run went wrong.
ONE_LINE_ERRORS = (ParamsError, InputError, NonFiniteError)
# dvc.yaml's foreach/matrix stages: their address carries the item, `<stage>@<item>`
MATRIX_STAGES = frozenset({"sample", "sample_guided", "sample_exact", "train_ddgan", "sample_ddgan"})


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM: the stage stops as a Ctrl-C stops it."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _interrupt(signum: int, frame) -> None:
    raise Interrupted(signum)


def entry_point(main: Callable[[list[str]], None],
                checkpoint: Callable[[list[str]], str | None] | None = None) -> None:
    """Run a stage's main(argv): pinned malloc thresholds, stale temporaries of its paths removed first.

    Bad params, inputs or non-finite results end in one line on stderr and exit status 2; an
    interrupt (SIGINT, SIGTERM) in one line and 128 + the signal. Under `dvc repro`, which deleted
    the stage's outputs before starting it, any failure first puts back the outputs dvc.lock
    records (pipelines/plumbing/restore.py): a failed stage loses nothing.

    A training stage passes `checkpoint`, its final checkpoint's path from argv (None where a run trains nothing):
    it then runs as runtime.processes ranks (`distributed.run_trainer`). A failed rank ends the stage in one line
    from the process that launched the ranks, which alone puts outputs back: the ranks hand their one-line errors
    over to it, and a rank that stops because another died, or is stopped, says nothing. Under a user's own
    torchrun, rank 0 speaks for the stage.
    """
    pin_malloc_thresholds()
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    argv = sys.argv[1:]
    remove_stale_temporaries(argv)
    rank = None
    if checkpoint is not None:
        from pipelines.plumbing import distributed  # torch.distributed: only the stages that train load it

        rank = distributed.torchrun_rank()
    if rank is not None and rank.launched:  # the launcher reports for the stage; its agent stops ranks with SIGTERM
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C reaches the launcher, which stops the ranks
    speaks = rank is None or (rank.rank == 0 and not rank.launched)  # reports for the stage, puts outputs back
    try:
        main_start = time.time()
        if checkpoint is None:
            main(argv)
        else:
            distributed.run_trainer(main, argv, checkpoint)
        if rank is None:
            _report_stage_time(main_start, time.time())
    except RanksFailed as e:  # in the process that launched the ranks
        restore_after_failure()
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.status)
    except ONE_LINE_ERRORS as e:
        if speaks:
            restore_after_failure()
        handed = rank is not None and rank.launched and distributed.hand_over(str(e))
        if not handed and (rank is None or rank.rank == 0):
            print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except Interrupted as e:
        if speaks:
            restore_after_failure()
            print(f"interrupted ({e}); committed outputs kept, rerun to resume", file=sys.stderr)
        sys.exit(128 + e.signum)
    except Exception as e:
        if checkpoint is not None and distributed.lost_peer(e, rank):
            sys.exit(distributed.LOST_PEER)
        if speaks:
            restore_after_failure()
        raise


def _report_stage_time(main_start: float, main_end: float) -> None:
    """With TRILEMMA_STAGE_TIMES set (benchmarks/stage_times.py), append when this stage's process started and
    when its main ran, so the benchmark can split the stage's wall time into fixed cost and compute."""
    path = os.environ.get("TRILEMMA_STAGE_TIMES")
    if path:
        stage = os.environ.get("DVC_STAGE") or Path(sys.argv[0]).stem
        line = json.dumps({"stage": stage, "started": process_start_ms() / 1000, "main_start": main_start,
                           "main_end": main_end})
        with open(path, "a") as f:
            f.write(line + "\n")


def stage_args(argv: list[str], names: tuple[str, ...]) -> list[str]:
    """Positional paths from dvc.yaml's cmd; a wrong count is a usage error naming what is expected."""
    if len(argv) != len(names):
        raise InputError(f"usage: expected {len(names)} arguments ({' '.join(names)}), got {len(argv)}")
    return argv


def dvc_stage(*names: str) -> tuple[str, str | None]:
    """The stage DVC is running, from the DVC_STAGE it sets for every command: (name, item), e.g. `sample@ddim-50` ->
    ("sample", "ddim-50"), `prepare` -> ("prepare", None); InputError unless its name is one of `names`.

    The item (a cell, a DDGAN T) comes from here, never from dvc.yaml's cmd: DVC interpolates `${key}` into the
    command before any stage can check it, so a name written in params.yaml would reach the shell (`dvc repro -s
    'sample@x$(...)'` skips the validate stage). A stage of a dvc.yaml in a subfolder is addressed
    `<folder>/dvc.yaml:<name>`; the folder is dropped.
    """
    address = os.environ.get("DVC_STAGE", "")
    folder, sep, rest = address.partition(":")
    if sep and folder.endswith("dvc.yaml"):
        address = rest
    name, at, item = address.partition("@")
    if name not in names:
        expected = " or ".join(f"{n}@<item>" if n in MATRIX_STAGES else n for n in names)
        raise InputError(f"DVC_STAGE: expected {expected}, got {address!r}: run this stage with `dvc repro` (by hand: "
                         f"DVC_STAGE={names[0]}{'@<item>' if names[0] in MATRIX_STAGES else ''} python -m ...)")
    return name, (item if at else None)


def checkpoint_path(models_dir: str, model: str) -> str:
    """Model `model`'s checkpoint, `<models>/<model>.pt` (dvc.yaml: models/${item.model}.pt, models/ddgan-${item.T}.pt)."""
    return str(Path(models_dir, f"{model}.pt"))


def parse_T(text: str) -> int:
    """A DDGAN stage's number of steps, its item in DVC_STAGE (`train_ddgan@4`: the matrix over params ddgan.T): a
    positive integer."""
    if not text.isdigit() or int(text) < 1:
        raise InputError(f"T: expected a positive integer number of denoising steps, got {text!r}")
    return int(text)


def progress_enabled() -> bool:
    """Progress bars only on a terminal, so CI logs stay clean."""
    return sys.stderr.isatty()
