"""Pooling of per-token hidden states into one vector per sequence: the one
table of modes and the one definition of which positions each mode reads,
used whole (:func:`pool`) and streamed chunk by chunk (the inference engine)."""
from __future__ import annotations

from typing import Optional

import torch

from mambadna.errors import InputError

# "none" keeps per-token states (no pooling); the others reduce the length axis
POOL_MODES = ("mean", "max", "first", "last", "center", "none")
POOLED = POOL_MODES[:-1]


def normalize_pool(pool: Optional[str], pooled_only: bool = False) -> str:
    """Canonical pooling name (None -> "none", "centre" -> "center"); InputError otherwise.
    ``pooled_only`` refuses "none" (heads need one vector per sequence)."""
    mode = "none" if pool is None else str(pool).lower()
    if mode == "centre":
        mode = "center"
    allowed = POOLED if pooled_only else POOL_MODES
    if mode not in allowed:
        raise InputError(None, f"pooling must be one of {', '.join(allowed)}, got {pool!r}")
    return mode


def selected(mode: str, P: torch.Tensor, lengths: torch.Tensor, center_width: int = 64) -> torch.Tensor:
    """Which positions a pooled ``mode`` averages over (all of them for "max").

    P: (batch, n) position of each element relative to its sequence start;
    lengths: (batch, 1) real tokens per sequence. Returns (batch, n) bool.
    ``center`` takes the ``center_width`` positions around length // 2 (and
    the centre itself when the width is 0).
    """
    if mode in ("mean", "max"):
        return torch.ones_like(P, dtype=torch.bool)
    if mode == "first":
        return P == 0
    if mode == "last":
        return P == lengths - 1
    centre = lengths // 2
    lo = centre - max(center_width // 2, 0)
    return ((P >= lo) & (P < lo + max(center_width, 1))) | (P == centre)


def pool(h: torch.Tensor, mode: str = "mean", mask: Optional[torch.Tensor] = None,
         center_width: int = 64) -> torch.Tensor:
    """Pool hidden states.

    h: (batch, length, d); mask: (batch, length) bool, True on real tokens
    (None = all real; real tokens are contiguous). ``center`` averages the
    ``center_width`` tokens around the middle of each sequence's real tokens.
    Returns (batch, d) in fp32.
    """
    if mode not in POOLED:
        raise ValueError(f"pooling must be one of {POOLED}, got {mode!r}")
    b, L, _ = h.shape
    hf = h.float()
    if mask is None:
        mask = torch.ones(b, L, dtype=torch.bool, device=h.device)
    lengths = mask.sum(1, keepdim=True)
    P = torch.arange(L, device=h.device)[None] - mask.float().argmax(1, keepdim=True)
    if mode == "max":
        return hf.masked_fill(~mask[..., None], float("-inf")).amax(1)
    w = (mask & selected(mode, P, lengths, center_width)).to(hf.dtype)
    return torch.einsum("bl,bld->bd", w, hf) / w.sum(1).clamp(min=1)[:, None]
