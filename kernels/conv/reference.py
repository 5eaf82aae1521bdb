"""Readable PyTorch reference of the depthwise causal/reverse conv + SiLU."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def conv1d_silu_ref(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                    context: Optional[torch.Tensor] = None, reverse: bool = False,
                    activation: bool = True) -> torch.Tensor:
    """Depthwise conv along the length (+ SiLU), channel-last; reference of
    :func:`mambadna.kernels.conv1d_silu`.

    x: (batch, L, D); weight: (D, K) or (D, 1, K); bias: (D,); context: (batch, K-1, D),
    the inputs before x (causal) or after it (reverse), zeros when None.
    Returns (batch, L, D) in x's dtype.
    """
    D, K = weight.shape[0], weight.shape[-1]
    w = weight.reshape(D, 1, K)
    if context is None:
        context = x.new_zeros(x.shape[0], K - 1, D)
    context = context.to(x.dtype)
    if reverse:
        xx = torch.cat([x, context], dim=1)
        w = w.flip(-1)
    else:
        xx = torch.cat([context, x], dim=1)
    y = F.conv1d(xx.transpose(1, 2), w.to(xx.dtype), None if bias is None else bias.to(xx.dtype), groups=D)
    if activation:
        y = F.silu(y)
    return y.transpose(1, 2).contiguous()
