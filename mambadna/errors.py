"""Errors that the CLI reports as one clear line and a non-zero exit."""
from __future__ import annotations

import os
from typing import Optional, Union


class MambaDNAError(Exception):
    """Base class for user-facing errors (bad input, bad checkpoint, ...)."""


class InputError(MambaDNAError):
    """Bad input file or argument. ``str(err)`` is ``"<path>: <problem>"``."""

    def __init__(self, path: Optional[Union[str, os.PathLike]], problem: str):
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class CheckpointError(InputError):
    """Missing, corrupt or incompatible checkpoint."""


class TrainingError(MambaDNAError):
    """Training cannot go on (e.g. a non-finite loss)."""


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived. A BaseException, so that ``except Exception``
    in library code does not swallow it; training loops turn it into a
    checkpoint at the next step boundary. ``exit_code`` is 128 + signal."""

    def __init__(self, signum: int, detail: str = ""):
        import signal

        self.signum = signum
        self.name = signal.Signals(signum).name
        self.exit_code = 128 + signum
        self.detail = detail  # e.g. where the checkpoint is and how to resume
        super().__init__(f"interrupted by {self.name}" + (f": {detail}" if detail else ""))
