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
