"""Pooling of per-token hidden states into one vector per sequence."""
from __future__ import annotations

from typing import Optional

import torch

POOL_MODES = ("mean", "max", "first", "last", "center")


def pool(h: torch.Tensor, mode: str = "mean", mask: Optional[torch.Tensor] = None,
         center_width: int = 64) -> torch.Tensor:
    """Pool hidden states.

    h: (batch, length, d); mask: (batch, length) bool, True on real tokens
    (None = all real). ``center`` averages the ``center_width`` tokens around
    the middle of each sequence's real tokens. Returns (batch, d) in fp32.
    """
    if mode not in POOL_MODES:
        raise ValueError(f"pooling must be one of {POOL_MODES}, got {mode!r}")
    b, L, _ = h.shape
    hf = h.float()
    if mask is None:
        mask = torch.ones(b, L, dtype=torch.bool, device=h.device)
    lengths = mask.sum(1).clamp(min=1)
    idx = torch.arange(L, device=h.device)
    first = mask.float().argmax(1)
    if mode == "mean":
        return (hf * mask[..., None]).sum(1) / lengths[:, None]
    if mode == "max":
        return hf.masked_fill(~mask[..., None], float("-inf")).amax(1)
    if mode == "first":
        return hf[torch.arange(b, device=h.device), first]
    if mode == "last":
        return hf[torch.arange(b, device=h.device), first + lengths - 1]
    centre = first + lengths // 2
    half = max(center_width // 2, 0)
    win = mask & (idx[None] >= (centre - half)[:, None]) & (idx[None] < (centre - half + max(center_width, 1))[:, None])
    win = win | (idx[None] == centre[:, None])
    return (hf * win[..., None]).sum(1) / win.sum(1).clamp(min=1)[:, None]
