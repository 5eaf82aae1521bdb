"""The Triton scan's saved-state budget (:data:`BUDGET`): thread-safe bounds on the fp32
states (checkpoints) kept between its passes, and what is alive, per device.

- ``fwd``: a forward whose inputs need gradients writes its backward's checkpoints while
  all such buffers alive on its device (awaiting their backwards) stay within this many
  bytes; None: 1/8 of the device's memory (of 8 GiB on a CPU); 0: never (each backward
  then computes them: less memory, slower). :func:`mambadna.kernels.scan_saved_state_limit`.
- ``bwd``: bytes of one backward's transient checkpoints (its segments are processed in
  groups that fit).
"""
from __future__ import annotations

import contextlib
import threading
from typing import Dict, Iterator, List, Optional, Tuple

import torch

_KEEP = object()


def _key(device) -> torch.device:
    d = torch.device(device)
    return torch.device("cuda", torch.cuda.current_device()) if d.type == "cuda" and d.index is None else d


class SavedStateBudget:
    """The bounds (fwd, bwd) and the bytes of forward-written checkpoints alive on each
    device, under one lock. A release (a freed buffer's finalizer, which a garbage
    collection may run inside a locked section of the same thread) only queues; the
    next locked call applies it."""

    def __init__(self, fwd: Optional[int] = None, bwd: int = 4 << 30):
        self._lock = threading.Lock()
        self.setting: Tuple[Optional[int], int] = (fwd, bwd)  # (read-only: see bounded)
        self._live: Dict[torch.device, int] = {}
        self._freed: List[Tuple[torch.device, int]] = []

    def fwd_bytes(self, device) -> int:
        fwd, d = self.setting[0], _key(device)
        if fwd is None:
            return (torch.cuda.get_device_properties(d).total_memory if d.type == "cuda" else 8 << 30) // 8
        return fwd

    def bwd_bytes(self, device) -> int:
        return self.setting[1]

    def live(self, device) -> int:
        """Bytes of forward-written checkpoints alive on device."""
        with self._lock:
            self._drain()
            return self._live.get(_key(device), 0)

    def reserve(self, device, nbytes: int) -> bool:
        """Count nbytes more alive on device if that stays within the fwd bound (else count
        nothing: False); :meth:`release` them once freed."""
        d, bound = _key(device), self.fwd_bytes(device)
        with self._lock:
            self._drain()
            if self._live.get(d, 0) + nbytes > bound:
                return False
            self._live[d] = self._live.get(d, 0) + nbytes
            return True

    def release(self, device, nbytes: int) -> None:
        self._freed.append((_key(device), nbytes))  # (atomic; no lock)

    def _drain(self) -> None:  # (the lock held)
        while self._freed:
            d, n = self._freed.pop()
            self._live[d] -= n

    @contextlib.contextmanager
    def bounded(self, fwd=_KEEP, bwd=_KEEP) -> Iterator[None]:
        """Within the block, these bounds (fwd None: the default); the previous ones back on
        exit. They are the process's, not the block's thread's: the backwards they govern
        may run on other threads."""
        with self._lock:
            old = self.setting
            self.setting = (old[0] if fwd is _KEEP else None if fwd is None else int(fwd),
                            old[1] if bwd is _KEEP else int(bwd))
        try:
            yield
        finally:
            with self._lock:
                self.setting = old


BUDGET = SavedStateBudget()
