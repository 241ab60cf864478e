"""What a stage reports in one line, with exit status 2 (pipelines/plumbing/entry.py): its params, inputs or run went wrong.

The three kinds, and `first_line`, which shortens a foreign exception's message to fit one. They live apart from
the code that raises them, so the entry point imports no params code (and one class is caught whether the params
module runs as __main__ or not).
"""

from __future__ import annotations


class ParamsError(ValueError):
    """A params.yaml value that cannot be used; the message names the key."""


class InputError(ValueError):
    """An input file (data, checkpoint, samples) that cannot be used; the message names the file."""


class NonFiniteError(ArithmeticError):
    """A computation that produced non-finite numbers (a diverged training run, a sampler that blew up)."""


class RanksFailed(Exception):
    """A rank of a training stage run as several torchrun ranks failed, and the others were stopped
    (pipelines/plumbing/distributed.py): the message is the stage's one line, `status` its exit status."""

    def __init__(self, line: str, status: int):
        super().__init__(line)
        self.status = status


def first_line(e: BaseException, limit: int = 120) -> str:
    """An exception's message for a one-line error: its first line, shortened."""
    return (str(e).splitlines() or [""])[0][:limit]
