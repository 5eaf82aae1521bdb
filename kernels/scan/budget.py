"""The Triton scan's saved-state budget (:data:`BUDGET`): per device, thread-safe bounds
on the fp32 states (checkpoints) kept between its passes.

- ``fwd``: a forward whose inputs need gradients writes its backward's checkpoints while
  all such buffers alive on the device (awaiting their backwards) stay within this many
  bytes; None: 1/8 of the device's memory (of 8 GiB on a CPU); 0: never (each backward
  then computes them: less memory, slower). :func:`mambadna.kernels.scan_saved_state_limit`.
- ``bwd``: bytes of one backward's transient checkpoints (its segments are processed in
  groups that fit).

Bounds set for ``device=None`` apply to every device without bounds of its own.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Dict, Iterator, List, Optional, Tuple

import torch

_KEEP = object()


def _key(device) -> Optional[torch.device]:
    d = None if device is None else torch.device(device)
    if d is not None and d.type == "cuda" and d.index is None:
        d = torch.device("cuda", torch.cuda.current_device())
    return d


class SavedStateBudget:
    """The bounds (fwd, bwd) of each device and the bytes of forward-written checkpoints
    alive on it, under one lock. A release (a freed buffer's finalizer, which a garbage
    collection may run inside a locked section of the same thread) only queues; the next
    locked call applies it."""

    def __init__(self, fwd: Optional[int] = None, bwd: int = 4 << 30):
        self._lock = threading.Lock()
        self._bounds: Dict[Optional[torch.device], Tuple[Optional[int], int]] = {None: (fwd, bwd)}
        self._live: Dict[torch.device, int] = {}
        self._freed: List[Tuple[torch.device, int]] = []

    def setting(self, device=None) -> Tuple[Optional[int], int]:
        """(fwd, bwd) as set for device (None: for every device)."""
        with self._lock:
            return self._bounds.get(_key(device), self._bounds[None])

    def fwd_bytes(self, device) -> int:
        d, fwd = _key(device), self.setting(device)[0]
        if fwd is None:
            return (torch.cuda.get_device_properties(d).total_memory if d.type == "cuda" else 8 << 30) // 8
        return fwd

    def bwd_bytes(self, device) -> int:
        return self.setting(device)[1]

    def live(self, device) -> int:
        """Bytes of forward-written checkpoints alive on device."""
        with self._lock:
            self._drain()
            return self._live.get(_key(device), 0)

    def reserve(self, device, nbytes: int) -> bool:
        """Count nbytes more alive on device if that stays within its fwd bound (else
        count nothing: False); :meth:`release` them once freed."""
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
    def bounded(self, fwd=_KEEP, bwd=_KEEP, device=None) -> Iterator[None]:
        """Within the block, these bounds for device (None: every device without its own;
        fwd None: the default); the previous ones back on exit. They are the process's,
        not the block's thread's: the backwards they govern may run on other threads."""
        d = _key(device)
        with self._lock:
            had, old = d in self._bounds, self._bounds.get(d, self._bounds[None])
            self._bounds[d] = (old[0] if fwd is _KEEP else None if fwd is None else int(fwd),
                               old[1] if bwd is _KEEP else int(bwd))
        try:
            yield
        finally:
            with self._lock:
                if had:
                    self._bounds[d] = old
                else:
                    del self._bounds[d]


BUDGET = SavedStateBudget()
