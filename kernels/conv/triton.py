"""Fused depthwise convolution along the length + SiLU, channel-last, in Triton.

x (batch, L, D) with unit channel stride, weight (D, K) fp32, bias (D,):

- causal:  ``y[t] = silu(bias + sum_j w[j] x[t - (K-1-j)])``;
- reverse: ``y[t] = silu(bias + sum_j w[j] x[t + (K-1-j)])`` (the causal conv of the
  flipped sequence, flipped back, without flipping anything).

Positions outside [0, L) read ``context`` (batch, K-1, D): the K-1 inputs before x
(causal) or after it (reverse); zeros without it. One program owns a (BL rows, BD
channels) tile; the K shifted rows it reads are L1/L2 hits, so the forward moves x
and y once.

The backward saves nothing but the inputs and is one kernel that reads x and dy once and
writes dx (dp, the gradient at the pre-activation, is never stored). It walks the rows
in stream order (t = u causal, t = L-1-u reverse: both directions are then the causal
conv); a program owns a run of rows of a channel block and streams it row by row, each
row a vector of channels, a few rows loaded at a time, carrying the last K-1 rows of x
and of dp in registers: per row v it forms pre[v] = bias + sum_i w[i] x[v-(K-1)+i] and
dp[v] = dy[v] * silu'(pre[v]), adds dp[v] x[v-(K-1)+j] to dweight[j] and dp[v] to dbias
(fp32, elementwise in registers), and stores dx[v-(K-1)] = sum_j w[j] dp[v-j], now
complete. After its run it streams K-1 more rows (the next run's: dp only, not counted)
for its last dx rows, and writes one (K+1, channels) partial of dweight/dbias, summed
on the host. The gradient of the small context comes from the reference on the K-1
edge rows.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl

from ..tuning import Tuned, cdiv, next_pow2


@dataclass(frozen=True)
class ConvTuning:
    """The conv's blocking (chosen on the H100). 128 channels on 1 warp is 4 a thread
    (8-byte bf16 accesses, 256 B a warp a row); 4 rows a step fit 128 registers on
    sm_90a (8 rows: 168)."""

    block_l: int = 32
    """Forward: rows of a program's tile."""
    block_d: int = 64
    """Forward: channels of a program's tile."""
    warps: int = 4
    """Forward: warps a program."""
    bwd_block_l: int = 4
    """Backward: rows loaded at a time (a run streams several such tiles)."""
    bwd_block_d: int = 128
    """Backward: channels a program, one (bwd_block_d,) vector a row."""
    bwd_warps: int = 1
    """Backward: warps a program."""
    bwd_per_sm: int = 16
    """Backward: the runs are sized so the grid is one wave of this many programs an SM
    (one-warp programs of <= 128 registers): the fewest programs, each writing one
    (K+1, bwd_block_d) fp32 partial of dweight/dbias, summed on the host."""
    bwd_tiles: int = 0
    """Backward: row tiles a run, fixed (> 0; tests, to stream several tiles a program
    where one wave of a 1-SM CPU gives other runs); 0: from bwd_per_sm."""


_TUNED = Tuned("mambadna_conv_tuning", ConvTuning())
tuning = _TUNED.get
use_tuning = _TUNED.use


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
def _row_ptr(ptr, pid_b, u, L, s_b, s_l, cols, REV: tl.constexpr):
    """Pointers to channels cols of stream row u: row u (causal) or L-1-u (reverse)."""
    if REV:
        t = L - 1 - u
    else:
        t = u
    return ptr + pid_b * s_b + t.to(tl.int64) * s_l + cols


@triton.jit
def _in(mask_c, u, lo, hi):
    """mask_c where lo <= u < hi (scalar u, splat first: the interpreter rejects a
    vector & scalar mask)."""
    r = u + tl.zeros_like(mask_c.to(tl.int32))
    return mask_c & (r >= lo) & (r < hi)


@triton.jit
def _x_row(x_ptr, c_ptr, pid_b, u, cols, mask_c, L, s_xb, s_xl, s_cb, s_cl,
           KM1: tl.constexpr, HAS_CTX: tl.constexpr, REV: tl.constexpr):
    """x at stream row u (any u < L) as fp32: context row K-1+u (causal) or -1-u
    (reverse) for -(K-1) <= u < 0, else 0."""
    v = tl.load(_row_ptr(x_ptr, pid_b, u, L, s_xb, s_xl, cols, REV),
                mask=_in(mask_c, u, 0, L), other=0.0).to(tl.float32)
    if HAS_CTX:
        if REV:
            crow = -1 - u
        else:
            crow = u + KM1
        v += tl.load(c_ptr + pid_b * s_cb + crow.to(tl.int64) * s_cl + cols,
                     mask=_in(mask_c, crow, 0, KM1), other=0.0).to(tl.float32)
    return v


@triton.jit
def _bwd_rows(x_ptr, g_ptr, dx_ptr, ws, bias, pid_b, v0, lo, L, cols, mask_c,
              s_xb, s_xl, s_gb, s_gl, s_dxb, s_dxl, xw, dpw, dws, dbs,
              N: tl.constexpr, COUNT: tl.constexpr, K: tl.constexpr, HAS_BIAS: tl.constexpr,
              REV: tl.constexpr, ACT: tl.constexpr):
    """Stream rows v0 .. v0+N-1 (0 <= v0) through the backward. In: xw = x at the K-1
    rows before v0, dpw = dp there. Per row v: dp[v] = dy[v] * silu'(pre[v]), with
    pre[v] = bias + sum_i w[i] x[v-(K-1)+i] (0 for v >= L); dweight[j] += dp[v]
    x[v-(K-1)+j] and dbias += dp[v] if COUNT; dx[v-(K-1)] = sum_j w[j] dp[v-j] is
    complete and stored if lo <= v-(K-1) < L. Returns the windows and accumulators."""
    xs = ()
    gs = ()
    for i in tl.static_range(N):  # all N loads first: N rows in flight
        m = _in(mask_c, v0 + i, 0, L)
        xs = xs + (tl.load(_row_ptr(x_ptr, pid_b, v0 + i, L, s_xb, s_xl, cols, REV),
                           mask=m, other=0.0).to(tl.float32),)
        gs = gs + (tl.load(_row_ptr(g_ptr, pid_b, v0 + i, L, s_gb, s_gl, cols, REV),
                           mask=m, other=0.0).to(tl.float32),)
    for i in tl.static_range(N):
        win = xw + (xs[i],)  # x[v-(K-1)] .. x[v]
        dp = gs[i]
        if ACT:
            p = bias + ws[0] * win[0]
            for k in tl.static_range(1, K):
                p += ws[k] * win[k]
            sg = tl.sigmoid(p)
            dp = dp * sg * (1.0 + p * (1.0 - sg))
        if COUNT:
            acc = ()
            for j in tl.static_range(K):
                acc = acc + (dws[j] + dp * win[j],)
            dws = acc
            if HAS_BIAS:
                dbs += dp
        dpwin = dpw + (dp,)  # dp[v-(K-1)] .. dp[v]
        dx = ws[0] * dpwin[K - 1]
        for j in tl.static_range(1, K):
            dx += ws[j] * dpwin[K - 1 - j]
        u = v0 + i - (K - 1)
        tl.store(_row_ptr(dx_ptr, pid_b, u, L, s_dxb, s_dxl, cols, REV), dx.to(dx_ptr.dtype.element_ty),
                 mask=_in(mask_c, u, lo, L))
        xw = win[1:]
        dpw = dpwin[1:]
    return xw, dpw, dws, dbs


@triton.jit
def _conv_bwd_kernel(x_ptr, c_ptr, w_ptr, b_ptr, g_ptr, dx_ptr, dw_ptr, db_ptr, L, D, NLT, TPP,
                     s_xb, s_xl, s_cb, s_cl, s_gb, s_gl, s_dxb, s_dxl,
                     K: tl.constexpr, BL: tl.constexpr, BD: tl.constexpr, HAS_CTX: tl.constexpr,
                     HAS_BIAS: tl.constexpr, REV: tl.constexpr, ACT: tl.constexpr):
    """The whole backward in one pass. Rows are taken in stream order u (t = u causal,
    t = L-1-u reverse), in which both directions are the causal conv. Program (p, c, b)
    owns channels c*BD.. of batch row b and the stream rows of row tiles
    [p*TPP, min((p+1)*TPP, NLT)) of BL rows. It streams them row by row, each row a
    (BD,) vector, BL rows loaded at a time, the last K-1 rows of x and of dp carried in
    registers (so nothing is recomputed), then K-1 rows past its end for its last dx
    rows. dweight/dbias are summed elementwise in fp32 registers and reduced once at the
    end: partial sums (NP * batch, D, K) and (NP * batch, D), NP = programs along the
    length, summed on the host."""
    pid_p = tl.program_id(0)
    pid_b = tl.program_id(2).to(tl.int64)
    cols = tl.program_id(1) * BD + tl.arange(0, BD)
    mask_c = cols < D
    bias = _bias_of(b_ptr, cols, mask_c, HAS_BIAS)
    u0 = pid_p * TPP * BL
    ws = ()
    dws = ()
    xw = ()
    dpw = ()
    for j in tl.static_range(K):
        ws = ws + (tl.load(w_ptr + cols * K + j, mask=mask_c, other=0.0),)
        dws = dws + (tl.zeros([BD], dtype=tl.float32),)
    for k in tl.static_range(K - 1):  # x at u0-(K-1) .. u0-1 (the context before row 0)
        xw = xw + (_x_row(x_ptr, c_ptr, pid_b, u0 - (K - 1) + k, cols, mask_c, L, s_xb, s_xl, s_cb, s_cl,
                          K - 1, HAS_CTX, REV),)
        dpw = dpw + (tl.zeros([BD], dtype=tl.float32),)  # only feeds dx rows < u0: not stored
    dbs = tl.zeros([BD], dtype=tl.float32)
    nt = tl.minimum(TPP, NLT - pid_p * TPP)
    for it in range(nt):
        xw, dpw, dws, dbs = _bwd_rows(x_ptr, g_ptr, dx_ptr, ws, bias, pid_b, u0 + it * BL, u0, L, cols, mask_c,
                                      s_xb, s_xl, s_gb, s_gl, s_dxb, s_dxl, xw, dpw, dws, dbs,
                                      BL, True, K, HAS_BIAS, REV, ACT)
    # the K-1 rows after the run (the next program's): dx of the run's last K-1 rows
    xw, dpw, dws, dbs = _bwd_rows(x_ptr, g_ptr, dx_ptr, ws, bias, pid_b, u0 + nt * BL, u0, L, cols, mask_c,
                                  s_xb, s_xl, s_gb, s_gl, s_dxb, s_dxl, xw, dpw, dws, dbs,
                                  K - 1, False, K, HAS_BIAS, REV, ACT)
    part = pid_b * tl.num_programs(0) + pid_p
    if HAS_BIAS:
        tl.store(db_ptr + part * D + cols, dbs, mask=mask_c)
    for j in tl.static_range(K):
        tl.store(dw_ptr + (part * D + cols) * K + j, dws[j], mask=mask_c)


def _geom(x, tu: ConvTuning):
    b, L, D = x.shape
    BL = min(tu.block_l, next_pow2(max(L, 1)))
    BD = min(tu.block_d, next_pow2(D))
    return BL, BD, (cdiv(L, BL), cdiv(D, BD), b)


def _launch_fwd(x, w, bias, context, reverse, act, tu: ConvTuning):
    b, L, D = x.shape
    K = w.shape[1]
    y = torch.empty_like(x)
    BL, BD, grid = _geom(x, tu)
    c = context if context is not None else x
    _conv_fwd_kernel[grid](
        x_ptr=x, c_ptr=c, w_ptr=w, b_ptr=bias if bias is not None else w, y_ptr=y, L=L, D=D,
        s_xb=x.stride(0), s_xl=x.stride(1), s_cb=c.stride(0), s_cl=c.stride(1), s_yb=y.stride(0), s_yl=y.stride(1),
        K=K, BL=BL, BD=BD, HAS_CTX=context is not None, HAS_BIAS=bias is not None, REV=reverse, ACT=act,
        num_warps=tu.warps,
    )
    return y


class _ConvFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, context, reverse, act):
        w = weight.float().contiguous()
        bf = None if bias is None else bias.float().contiguous()
        c = None if context is None else context.to(x.dtype).contiguous()
        ctx.tu = tuning()  # the backward may run in autograd's device thread
        y = _launch_fwd(x, w, bf, c, reverse, act, ctx.tu)
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
        tu = ctx.tu
        BL = tu.bwd_block_l
        BD = min(tu.bwd_block_d, next_pow2(D))
        NLT, NC = cdiv(L, BL), cdiv(D, BD)
        TPP = tu.bwd_tiles
        if TPP <= 0:  # one wave: as many runs along the length as the SMs hold programs
            n_sm = torch.cuda.get_device_properties(x.device).multi_processor_count if x.is_cuda else 1
            TPP = cdiv(NLT, max(1, n_sm * tu.bwd_per_sm // (NC * b)))
        TPP = max(1, min(TPP, NLT))
        NP = cdiv(NLT, TPP)
        dx = torch.empty_like(x)
        dw = torch.empty(b * NP, D, K, device=x.device, dtype=torch.float32)
        db = torch.empty(b * NP, D, device=x.device, dtype=torch.float32) if bf is not None else dw
        cc = c if c is not None else x
        _conv_bwd_kernel[(NP, NC, b)](
            x_ptr=x, c_ptr=cc, w_ptr=w, b_ptr=bf if bf is not None else w, g_ptr=gy, dx_ptr=dx, dw_ptr=dw, db_ptr=db,
            L=L, D=D, NLT=NLT, TPP=TPP, s_xb=x.stride(0), s_xl=x.stride(1), s_cb=cc.stride(0), s_cl=cc.stride(1),
            s_gb=gy.stride(0), s_gl=gy.stride(1), s_dxb=dx.stride(0), s_dxl=dx.stride(1),
            K=K, BL=BL, BD=BD, HAS_CTX=c is not None, HAS_BIAS=bf is not None, REV=reverse, ACT=act,
            num_warps=tu.bwd_warps,
        )
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
