"""Readable PyTorch reference of RMSNorm (fp32 compute, keeps x and 1/rms for backward)."""
from __future__ import annotations

from typing import Optional

import torch

from ..tuning import needs_grad

Tensor = torch.Tensor


def _rstd(xf: Tensor, eps: float) -> Tensor:
    """Per-row 1/rms of fp32 x: (..., d) -> (..., 1)."""
    return torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)


def _rms_norm_formula(x: Tensor, weight: Tensor, eps: float, out_dtype: torch.dtype) -> Tensor:
    xf = x.float()
    return (xf * _rstd(xf, eps) * weight.float()).to(out_dtype)


class _RMSNormRefFn(torch.autograd.Function):
    """The formula keeping only x and the per-row 1/rms (fp32) for backward; autograd
    through the ops would keep two fp32 copies of x's size (x.float() and the
    normalised x), i.e. 2 x 4 bytes per element per norm."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, eps: float, out_dtype: torch.dtype) -> Tensor:
        xf = x.float()
        rstd = _rstd(xf, eps)
        out = (xf * rstd * weight.float()).to(out_dtype)
        ctx.save_for_backward(x, weight, rstd)
        return out

    @staticmethod
    def backward(ctx, g: Tensor):
        x, weight, rstd = ctx.saved_tensors
        xhat = x.float() * rstd
        gf = g.float()
        g_w = None
        if ctx.needs_input_grad[1]:
            g_w = (gf * xhat).reshape(-1, x.shape[-1]).sum(0).to(weight.dtype)
        g_x = None
        if ctx.needs_input_grad[0]:
            gw = gf * weight.float()
            del gf
            g_x = ((gw - xhat * (gw * xhat).mean(-1, keepdim=True)) * rstd).to(x.dtype)
        return g_x, g_w, None, None


def rms_norm_ref(x: Tensor, weight: Tensor, eps: float = 1e-5,
                 out_dtype: Optional[torch.dtype] = None) -> Tensor:
    """RMSNorm over the last dimension in fp32: ``x * rsqrt(mean(x^2) + eps) * weight``.

    x: (..., d); weight: (d,). Returns (..., d) in ``out_dtype`` (default x's dtype).
    Under autograd it keeps only x and the per-row 1/rms for backward.
    """
    out_dtype = out_dtype or x.dtype
    if needs_grad(x, weight):
        return _RMSNormRefFn.apply(x, weight, eps, out_dtype)
    return _rms_norm_formula(x, weight, eps, out_dtype)
