"""The arguments of the running command (``--gpus`` re-runs them under torchrun)."""
from __future__ import annotations

import sys
from typing import List, Optional, Sequence

_ARGS: Optional[List[str]] = None


def set_args(argv: Optional[Sequence]) -> None:
    global _ARGS
    _ARGS = None if argv is None else [str(a) for a in argv]


def invocation_args() -> List[str]:
    return list(_ARGS) if _ARGS is not None else sys.argv[1:]
