"""Fused depthwise convolution along the length + SiLU, channel-last, in Triton.

x (batch, L, D) with unit channel stride, weight (D, K) fp32, bias (D,):

- causal:  ``y[t] = silu(bias + sum_j w[j] x[t - (K-1-j)])``;
- reverse: ``y[t] = silu(bias + sum_j w[j] x[t + (K-1-j)])`` (the causal conv of the
  flipped sequence, flipped back, without flipping anything).

Positions outside [0, L) read ``context`` (batch, K-1, D): the K-1 inputs before x
(causal) or after it (reverse); zeros without it. One program owns a (BL rows, BD
channels) tile; the K shifted rows it reads are L1/L2 hits, so the forward moves x
and y once. The backward saves nothing but the inputs: pass 1 recomputes the
pre-activation and writes its gradient (fp32, transient) with per-tile partial sums of
dweight and dbias (summed on the host); pass 2 is the transposed conv of it, dx. The
gradient of the small context comes from the reference on the K-1 edge rows.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

CONFIG = {"block_l": 32, "block_d": 64, "warps": 4}


@triton.jit
def _tile(D, BL: tl.constexpr, BD: tl.constexpr):
    """This program's (row block, batch row, rows, channels, channel mask)."""
    pid_l = tl.program_id(0)
    pid_b = tl.program_id(2).to(tl.int64)
    rows = pid_l * BL + tl.arange(0, BL)
    cols = tl.program_id(1) * BD + tl.arange(0, BD)
    return pid_l, pid_b, rows, cols, cols < D


@triton.jit
def _bias_of(b_ptr, cols, mask_c, HAS_BIAS: tl.constexpr):
    if HAS_BIAS:
        return tl.load(b_ptr + cols, mask=mask_c, other=0.0)
    else:
        return tl.zeros([cols.shape[0]], dtype=tl.float32)


@triton.jit
def _tap(rows, j, K: tl.constexpr, REV: tl.constexpr):
    """Rows of x that the outputs at rows read through w[j]."""
    if REV:
        return rows + (K - 1 - j)
    else:
        return rows - (K - 1 - j)


@triton.jit
def _xrows(x_ptr, c_ptr, pid_b, rows, cols, mask_c, L, s_xb, s_xl, s_cb, s_cl,
           KM1: tl.constexpr, HAS_CTX: tl.constexpr, REV: tl.constexpr):
    """x at (rows, cols) as fp32; rows outside [0, L) from the context (or 0)."""
    inx = (rows >= 0) & (rows < L)
    r64 = rows.to(tl.int64)
    v = tl.load(x_ptr + pid_b * s_xb + r64[:, None] * s_xl + cols[None, :],
                mask=inx[:, None] & mask_c[None, :], other=0.0).to(tl.float32)
    if HAS_CTX:
        if REV:
            crow = rows - L
        else:
            crow = rows + KM1
        inc = (crow >= 0) & (crow < KM1)
        v += tl.load(c_ptr + pid_b * s_cb + crow.to(tl.int64)[:, None] * s_cl + cols[None, :],
                     mask=inc[:, None] & mask_c[None, :], other=0.0).to(tl.float32)
    return v


@triton.jit
def _pre(x_ptr, c_ptr, w_ptr, bias, pid_b, rows, cols, mask_c, L, s_xb, s_xl, s_cb, s_cl,
         K: tl.constexpr, HAS_CTX: tl.constexpr, REV: tl.constexpr):
    """Pre-activation at rows: bias + sum_j w[j] x[rows -+ (K-1-j)]."""
    acc = tl.zeros([rows.shape[0], cols.shape[0]], dtype=tl.float32) + bias[None, :]
    for j in tl.static_range(K):
        r = _tap(rows, j, K, REV)
        wj = tl.load(w_ptr + cols * K + j, mask=mask_c, other=0.0)
        acc += wj[None, :] * _xrows(x_ptr, c_ptr, pid_b, r, cols, mask_c, L, s_xb, s_xl, s_cb, s_cl,
                                    K - 1, HAS_CTX, REV)
    return acc


@triton.jit
def _conv_fwd_kernel(x_ptr, c_ptr, w_ptr, b_ptr, y_ptr, L, D,
                     s_xb, s_xl, s_cb, s_cl, s_yb, s_yl,
                     K: tl.constexpr, BL: tl.constexpr, BD: tl.constexpr, HAS_CTX: tl.constexpr,
                     HAS_BIAS: tl.constexpr, REV: tl.constexpr, ACT: tl.constexpr):
    pid_l, pid_b, rows, cols, mask_c = _tile(D, BL, BD)
    bias = _bias_of(b_ptr, cols, mask_c, HAS_BIAS)
    p = _pre(x_ptr, c_ptr, w_ptr, bias, pid_b, rows, cols, mask_c, L, s_xb, s_xl, s_cb, s_cl, K, HAS_CTX, REV)
    if ACT:
        p = p * tl.sigmoid(p)
    tl.store(y_ptr + pid_b * s_yb + rows.to(tl.int64)[:, None] * s_yl + cols[None, :],
             p.to(y_ptr.dtype.element_ty), mask=(rows < L)[:, None] & mask_c[None, :])


@triton.jit
def _dpre(x_ptr, c_ptr, w_ptr, bias, g_ptr, pid_b, rows, cols, mask_c, L, s_xb, s_xl, s_cb, s_cl,
          s_gb, s_gl, K: tl.constexpr, HAS_CTX: tl.constexpr, REV: tl.constexpr, ACT: tl.constexpr):
    """Gradient at the pre-activation at rows (0 outside [0, L))."""
    inr = (rows >= 0) & (rows < L)
    g = tl.load(g_ptr + pid_b * s_gb + rows.to(tl.int64)[:, None] * s_gl + cols[None, :],
                mask=inr[:, None] & mask_c[None, :], other=0.0).to(tl.float32)
    if ACT:
        p = _pre(x_ptr, c_ptr, w_ptr, bias, pid_b, rows, cols, mask_c, L, s_xb, s_xl, s_cb, s_cl,
                 K, HAS_CTX, REV)
        s = tl.sigmoid(p)
        g = g * s * (1.0 + p * (1.0 - s))
    return g


@triton.jit
def _conv_dpre_kernel(x_ptr, c_ptr, w_ptr, b_ptr, g_ptr, dp_ptr, dw_ptr, db_ptr, L, D, NLT,
                      s_xb, s_xl, s_cb, s_cl, s_gb, s_gl,
                      K: tl.constexpr, BL: tl.constexpr, BD: tl.constexpr, HAS_CTX: tl.constexpr,
                      HAS_BIAS: tl.constexpr, REV: tl.constexpr, ACT: tl.constexpr):
    """Backward, pass 1: the gradient at the pre-activation dp (batch, L, D) fp32, and
    dweight (NLT * batch, D, K) and dbias (NLT * batch, D) partial sums over the tile."""
    pid_l, pid_b, rows, cols, mask_c = _tile(D, BL, BD)
    bias = _bias_of(b_ptr, cols, mask_c, HAS_BIAS)
    part = pid_b * NLT + pid_l
    d0 = _dpre(x_ptr, c_ptr, w_ptr, bias, g_ptr, pid_b, rows, cols, mask_c, L,
               s_xb, s_xl, s_cb, s_cl, s_gb, s_gl, K, HAS_CTX, REV, ACT)
    tl.store(dp_ptr + (pid_b * L + rows.to(tl.int64))[:, None] * D + cols[None, :], d0,
             mask=(rows < L)[:, None] & mask_c[None, :])
    if HAS_BIAS:
        tl.store(db_ptr + part * D + cols, tl.sum(d0, axis=0), mask=mask_c)
    for j in tl.static_range(K):
        xr = _tap(rows, j, K, REV)
        xv = _xrows(x_ptr, c_ptr, pid_b, xr, cols, mask_c, L, s_xb, s_xl, s_cb, s_cl, K - 1, HAS_CTX, REV)
        tl.store(dw_ptr + (part * D + cols) * K + j, tl.sum(d0 * xv, axis=0), mask=mask_c)


@triton.jit
def _conv_dx_kernel(dp_ptr, w_ptr, dx_ptr, L, D, s_db, s_dl,
                    K: tl.constexpr, BL: tl.constexpr, BD: tl.constexpr, REV: tl.constexpr):
    """Backward, pass 2: dx[t] = sum_j w[j] dp[t +- (K-1-j)] (the transposed conv)."""
    pid_l, pid_b, rows, cols, mask_c = _tile(D, BL, BD)
    dx = tl.zeros([BL, BD], dtype=tl.float32)
    for j in tl.static_range(K):
        o = _tap(rows, j, K, not REV)  # the output rows that read x[rows] through w[j]
        wj = tl.load(w_ptr + cols * K + j, mask=mask_c, other=0.0)
        m = ((o >= 0) & (o < L))[:, None] & mask_c[None, :]
        dx += wj[None, :] * tl.load(dp_ptr + (pid_b * L + o.to(tl.int64))[:, None] * D + cols[None, :],
                                    mask=m, other=0.0)
    tl.store(dx_ptr + pid_b * s_db + rows.to(tl.int64)[:, None] * s_dl + cols[None, :],
             dx.to(dx_ptr.dtype.element_ty), mask=(rows < L)[:, None] & mask_c[None, :])


def _geom(x):
    b, L, D = x.shape
    BL = min(CONFIG["block_l"], triton.next_power_of_2(max(L, 1)))
    BD = min(CONFIG["block_d"], triton.next_power_of_2(D))
    return BL, BD, (triton.cdiv(L, BL), triton.cdiv(D, BD), b)


def _launch_fwd(x, w, bias, context, reverse, act):
    b, L, D = x.shape
    K = w.shape[1]
    y = torch.empty_like(x)
    BL, BD, grid = _geom(x)
    c = context if context is not None else x
    _conv_fwd_kernel[grid](
        x, c, w, bias if bias is not None else w, y, L, D,
        x.stride(0), x.stride(1), c.stride(0), c.stride(1), y.stride(0), y.stride(1),
        K=K, BL=BL, BD=BD, HAS_CTX=context is not None, HAS_BIAS=bias is not None, REV=reverse, ACT=act,
        num_warps=CONFIG["warps"],
    )
    return y


class _ConvFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, context, reverse, act):
        w = weight.float().contiguous()
        bf = None if bias is None else bias.float().contiguous()
        c = None if context is None else context.to(x.dtype).contiguous()
        y = _launch_fwd(x, w, bf, c, reverse, act)
        ctx.save_for_backward(x, w, bf, c)
        ctx.flags = (reverse, act, weight.dtype, None if bias is None else bias.dtype,
                     None if context is None else context.dtype)
        return y

    @staticmethod
    def backward(ctx, gy):
        x, w, bf, c = ctx.saved_tensors
        reverse, act, w_dt, b_dt, c_dt = ctx.flags
        gy = gy if gy.stride(-1) == 1 else gy.contiguous()
        b, L, D = x.shape
        K = w.shape[1]
        BL, BD, grid = _geom(x)
        NLT = grid[0]
        dx = torch.empty_like(x)
        dp = torch.empty(b, L, D, device=x.device, dtype=torch.float32)
        dw = torch.empty(b * NLT, D, K, device=x.device, dtype=torch.float32)
        db = torch.empty(b * NLT, D, device=x.device, dtype=torch.float32) if bf is not None else dw
        cc = c if c is not None else x
        _conv_dpre_kernel[grid](
            x, cc, w, bf if bf is not None else w, gy, dp, dw, db, L, D, NLT,
            x.stride(0), x.stride(1), cc.stride(0), cc.stride(1), gy.stride(0), gy.stride(1),
            K=K, BL=BL, BD=BD, HAS_CTX=c is not None, HAS_BIAS=bf is not None, REV=reverse, ACT=act,
            num_warps=CONFIG["warps"],
        )
        _conv_dx_kernel[grid](dp, w, dx, L, D, dx.stride(0), dx.stride(1), K=K, BL=BL, BD=BD, REV=reverse,
                              num_warps=CONFIG["warps"])
        del dp
        dweight = dw.sum(0).to(w_dt)
        dbias = db.sum(0).to(b_dt) if bf is not None else None
        dctx = None
        if c is not None and ctx.needs_input_grad[3]:
            from .reference import conv1d_silu_ref
            e = K - 1
            with torch.enable_grad():
                cg = c.detach().requires_grad_()
                lo = max(L - e, 0)
                xs = x[:, lo:] if reverse else x[:, :e]
                gs = gy[:, lo:] if reverse else gy[:, :e]
                ye = conv1d_silu_ref(xs.detach(), w, bf, cg, reverse, act)
                dctx, = torch.autograd.grad(ye, cg, gs.to(ye.dtype))
            dctx = dctx.to(c_dt)
        return dx, dweight, dbias, dctx, None, None


def conv1d_silu_triton(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                       context: Optional[torch.Tensor] = None, reverse: bool = False,
                       activation: bool = True) -> torch.Tensor:
    """Triton depthwise conv + SiLU; see :func:`mambadna.kernels.conv1d_silu`."""
    if x.stride(-1) != 1:
        x = x.contiguous()
    return _ConvFn.apply(x, weight.reshape(weight.shape[0], weight.shape[-1]), bias, context,
                         bool(reverse), bool(activation))
