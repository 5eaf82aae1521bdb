"""Fused RMSNorm over the last dimension, forward and backward, in Triton.

``y = x * rsqrt(mean(x^2) + eps) * weight`` computed in fp32 and written in the
requested dtype (the model asks for the autocast dtype, so the linear layer after the
norm needs no cast pass). The forward reads x once and writes y and the per-row
1/rms (fp32); the backward reads x, the output gradient and 1/rms once and writes dx,
with per-program partial sums of dweight (summed on the host). In PyTorch ops the
same norm is ~12 passes over (rows, d) fp32 tensors per forward + backward.
Reference: :func:`mambadna.kernels.norm.reference.rms_norm_ref`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl

from ..tuning import Tuned, cdiv, next_pow2


@dataclass(frozen=True)
class NormTuning:
    """The norm's blocking."""

    rows: int = 4096
    """Elements a tile: rows = this // the padded width (at most 64)."""
    warps: int = 4
    """Warps a program."""
    max_programs: int = 1024
    """Backward: programs at most (each writes one fp32 partial of dweight)."""


_TUNED = Tuned("mambadna_norm_tuning", NormTuning())
tuning = _TUNED.get
use_tuning = _TUNED.use


@triton.jit
def _rms_fwd_kernel(x_ptr, w_ptr, y_ptr, r_ptr, M, D, eps, BM: tl.constexpr, BD: tl.constexpr):
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    cols = tl.arange(0, BD)
    mask_r = rows < M
    mask_c = cols < D
    m = mask_r[:, None] & mask_c[None, :]
    off = rows.to(tl.int64)[:, None] * D + cols[None, :]
    x = tl.load(x_ptr + off, mask=m, other=0.0).to(tl.float32)
    r = tl.rsqrt(tl.sum(x * x, axis=1) / D + eps)
    w = tl.load(w_ptr + cols, mask=mask_c, other=0.0).to(tl.float32)
    tl.store(y_ptr + off, (x * r[:, None] * w[None, :]).to(y_ptr.dtype.element_ty), mask=m)
    tl.store(r_ptr + rows, r, mask=mask_r)


@triton.jit
def _rms_bwd_kernel(x_ptr, w_ptr, g_ptr, r_ptr, dx_ptr, dw_ptr, M, D, NPROG,
                    BM: tl.constexpr, BD: tl.constexpr):
    """Row blocks pid, pid + NPROG, ...; dw partial of this program -> dw[pid]."""
    pid = tl.program_id(0)
    cols = tl.arange(0, BD)
    mask_c = cols < D
    w = tl.load(w_ptr + cols, mask=mask_c, other=0.0).to(tl.float32)
    dw = tl.zeros([BD], dtype=tl.float32)
    for blk in range(pid, tl.cdiv(M, BM), NPROG):
        rows = blk * BM + tl.arange(0, BM)
        mask_r = rows < M
        m = mask_r[:, None] & mask_c[None, :]
        off = rows.to(tl.int64)[:, None] * D + cols[None, :]
        x = tl.load(x_ptr + off, mask=m, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + off, mask=m, other=0.0).to(tl.float32)
        r = tl.load(r_ptr + rows, mask=mask_r, other=0.0)
        xh = x * r[:, None]
        gw = g * w[None, :]
        c = tl.sum(gw * xh, axis=1) / D
        dx = (gw - xh * c[:, None]) * r[:, None]
        tl.store(dx_ptr + off, dx.to(dx_ptr.dtype.element_ty), mask=m)
        dw += tl.sum(g * xh, axis=0)
    tl.store(dw_ptr + pid.to(tl.int64) * D + cols, dw, mask=mask_c)


def _geom(M: int, D: int, tu: NormTuning):
    BD = next_pow2(D)
    BM = max(1, min(64, tu.rows // BD))
    return BM, BD, cdiv(M, BM)


class _RMSNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps, out_dtype):
        D = x.shape[-1]
        x2 = x.reshape(-1, D)
        if not x2.is_contiguous():
            x2 = x2.contiguous()
        M = x2.shape[0]
        tu = ctx.tu = tuning()  # the backward may run in autograd's device thread
        BM, BD, nblk = _geom(M, D, tu)
        y = torch.empty(M, D, device=x.device, dtype=out_dtype)
        r = torch.empty(M, device=x.device, dtype=torch.float32)
        w = weight.contiguous()
        if M:
            _rms_fwd_kernel[(nblk,)](x_ptr=x2, w_ptr=w, y_ptr=y, r_ptr=r, M=M, D=D, eps=float(eps), BM=BM, BD=BD,
                                     num_warps=tu.warps)
        ctx.save_for_backward(x2, w, r)
        ctx.shape = x.shape
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, g):
        x2, w, r = ctx.saved_tensors
        M, D = x2.shape
        g2 = g.reshape(-1, D)
        if not g2.is_contiguous():
            g2 = g2.contiguous()
        tu = ctx.tu
        BM, BD, nblk = _geom(M, D, tu)
        nprog = max(1, min(nblk, tu.max_programs))
        dx = torch.empty_like(x2)
        dw = torch.empty(nprog, D, device=x2.device, dtype=torch.float32)
        if M:
            _rms_bwd_kernel[(nprog,)](x_ptr=x2, w_ptr=w, g_ptr=g2, r_ptr=r, dx_ptr=dx, dw_ptr=dw, M=M, D=D,
                                      NPROG=nprog, BM=BM, BD=BD, num_warps=tu.warps)
        else:
            dw.zero_()
        gw = dw.sum(0).to(w.dtype) if ctx.needs_input_grad[1] else None
        return dx.view(ctx.shape), gw, None, None


def rms_norm_triton(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5,
                    out_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Triton RMSNorm; see :func:`mambadna.kernels.rms_norm`."""
    return _RMSNormFn.apply(x, weight, float(eps), out_dtype or x.dtype)
