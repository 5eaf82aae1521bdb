"""Kernel tuning, and the host-side launch helpers the kernels share.

Tuning is a frozen dataclass per kernel family, read through a context variable.
A test or benchmark changes it for a block, in its own thread or context only
(:meth:`Tuned.use`), never by editing a global dict; an autograd function keeps
its forward's tuning for the backward, which may run in another thread."""
from __future__ import annotations

import contextlib
import dataclasses
from contextvars import ContextVar
from typing import Generic, Iterator, Optional, TypeVar

import torch

T = TypeVar("T")


class Tuned(Generic[T]):
    """The current tuning of one kernel family (``default`` outside :meth:`use`)."""

    def __init__(self, name: str, default: T):
        self._var: ContextVar[T] = ContextVar(name, default=default)

    def get(self) -> T:
        """The tuning that launches started now (in this thread / context) use."""
        return self._var.get()

    @contextlib.contextmanager
    def use(self, base: Optional[T] = None, **changes) -> Iterator[T]:
        """Within the block (this thread / context), base (default: the current
        tuning) with the given fields changed."""
        token = self._var.set(dataclasses.replace(base or self._var.get(), **changes))
        try:
            yield self._var.get()
        finally:
            self._var.reset(token)


# launch geometry on the host: Triton's cdiv / next_power_of_2 are constexpr functions,
# ~2 us a call from Python, and a scan's launches make dozens of them
def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def next_pow2(n: int) -> int:
    return 1 << (n - 1).bit_length() if n > 1 else max(n, 0)


def needs_grad(*ts) -> bool:
    """Whether a backward can follow: grad mode on and a (non-None) input requiring a
    gradient. Decided before an autograd function runs: inside its forward,
    ``ctx.needs_input_grad`` says True for a parameter even under ``no_grad``, and a
    forward that is recomputed later, or an inference, would keep states for nothing."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in ts)
