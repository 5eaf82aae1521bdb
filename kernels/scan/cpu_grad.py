"""Selective scan and depthwise conv + SiLU with gradients on CPU (numba): training and
fine-tuning without a GPU.

The scan core ``y_t = sum_n h_t C_t``, ``h_t = exp(dt_t A) h_{t-1} + dt_t u_t B_t``
(h_{-1} = 0; with ``reverse`` walked from the end) is one autograd function whose
forward and backward are compiled loops (the polynomials and thread set-up of
:mod:`.cpu`). The forward keeps the fp32 state entering every ``K``-th position; the
backward recomputes each block of K states (and their decays) from it and walks the
block backwards with the adjoint ``dh``, writing du, ddt, dB, dC and per-row partials
of dA. Nothing of
size (batch, length, d_inner, d_state) is ever made; the reference's autograd makes
several. The core also computes ``dt = softplus(delta + bias)`` (kept for the backward,
whose softplus derivative is ``1 - exp(-dt)``) and the ``+ D u`` skip; only the
``silu(z)`` gate is PyTorch ops (for the bidirectional scan once, on the sum).

The conv (:func:`conv1d_silu_cpu_grad`): the forward is the compiled inference conv
before the SiLU (kept); the backward walks each batch row once, scattering
w * dSiLU(pre) dy into the padded input's gradient and summing the weight and bias
gradients per task.

Used by :mod:`mambadna.kernels` for CPU tensors when a gradient is to come and numba
imports; the scan without an initial or final state (those, chunked training, keep the
reference). References: :func:`.reference.selective_scan_ref`,
:func:`..conv.reference.conv1d_silu_ref`.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from . import cpu as _cpu

Tensor = torch.Tensor
_K = 16  # positions between kept states
_W = 128  # channels a task
CALLS = {"scan": 0, "conv": 0}

if _cpu.numba is not None:
    _jit, _JIT, _exp, _exp2 = _cpu._jit, _cpu._JIT, _cpu._exp, _cpu._exp2
    _advance, _dt_row, _task_of, _work_arrays = _cpu._advance, _cpu._dt_row, _cpu._task_of, _cpu._work_arrays
    _ZERO = np.float32(0.0)

    @_jit(**_JIT)
    def _fwd(lo, hi, W, G, K, rev, sp, u, delta, bias, Dv, At, B, C, y, dt, hck):
        """Tasks lo..hi: dt = softplus(delta + bias) (``sp``; else delta + bias) into dt,
        y = sum_n h C + D u (b, L, d) and the states entering every K-th step, hck
        (b, nck, N, d)."""
        L, d = u.shape[1], u.shape[2]
        N = At.shape[0]
        dg = d // G
        nblk = (dg + W - 1) // W
        h, dtv, dtu, acc = _work_arrays(N, W)
        for task in range(lo, hi):
            bi, g, blk, d0, cw = _task_of(task, G, nblk, dg, W)
            e = d0 + cw
            br = bias[d0:e]
            Dr = Dv[d0:e]
            for n in range(N):
                for c in range(cw):
                    h[n, c] = _ZERO
            for s in range(L):
                if s % K == 0:
                    k = s // K
                    for n in range(N):
                        hk = hck[bi, k, n, d0:e]
                        for c in range(cw):
                            hk[c] = h[n, c]
                t = L - 1 - s if rev else s
                ur = u[bi, t, d0:e]
                xr = delta[bi, t, d0:e]
                dr = dt[bi, t, d0:e]
                _dt_row(xr, br, sp, ur, cw, dtv, dtu)
                for c in range(cw):
                    dr[c] = dtv[c]  # kept for the backward
                    acc[c] = _ZERO
                _advance(h, At, B, C, bi, t, g, d0, cw, dtv, dtu, acc)
                yr = y[bi, t, d0:e]
                for c in range(cw):
                    yr[c] = acc[c] + Dr[c] * ur[c]

    @_jit(**_JIT)
    def _recompute(m, rev, s0, bi, g, d0, cw, u, dt, At, B, hs, ah):
        """The m states after hs[0] (a block from its kept state) into hs[1..m], and
        their decays 2^(dt At) into ah[0..m-1]."""
        L = u.shape[1]
        e = d0 + cw
        for j in range(m):
            t = L - 1 - (s0 + j) if rev else s0 + j
            ur = u[bi, t, d0:e]
            dr = dt[bi, t, d0:e]
            for n in range(At.shape[0]):
                bn = B[bi, t, g, n]
                Ar = At[n, d0:e]
                hp = hs[j, n]
                hn = hs[j + 1, n]
                an = ah[j, n]
                for c in range(cw):
                    a = _exp2(dr[c] * Ar[c])
                    an[c] = a
                    hn[c] = a * hp[c] + dr[c] * ur[c] * bn

    @_jit(**_cpu._JIT_SUM)  # the dB / dC sums over channels may be reordered (vectorised)
    def _walk(m, rev, sp, s0, bi, g, d0, cw, col, u, dt, Dv, An, B, C, hs, ah, dh, dy, du, ddl, dA, dD, dB, dC,
              gdt, sb, dtu):
        """The block's positions backwards with the adjoint dh (N, W): du, ddl (delta's
        gradient), dA, dD, dB, dC. Per position: ddt = sum_n dh a h_prev A + u sum_n dh B,
        ddl = ddt sigmoid(delta + bias) = ddt (1 - e^-dt) (``sp``), du = dt sum_n dh B + D dy."""
        L = u.shape[1]
        e = d0 + cw
        for j in range(m - 1, -1, -1):
            t = L - 1 - (s0 + j) if rev else s0 + j
            ur = u[bi, t, d0:e]
            dr = dt[bi, t, d0:e]
            gy = dy[bi, t, d0:e]
            for c in range(cw):
                gdt[c] = _ZERO
                sb[c] = _ZERO
                dtu[c] = dr[c] * ur[c]
            for n in range(An.shape[0]):
                bn = B[bi, t, g, n]
                cn = C[bi, t, g, n]
                Anr = An[n, d0:e]
                hp = hs[j, n]
                hc = hs[j + 1, n]
                an = ah[j, n]
                dhn = dh[n]
                dAr = dA[bi, n, d0:e]
                db = _ZERO
                dc = _ZERO
                for c in range(cw):
                    dhv = dhn[c] + gy[c] * cn
                    x = dhv * an[c] * hp[c]
                    gdt[c] += x * Anr[c]
                    dAr[c] += x * dr[c]
                    sb[c] += dhv * bn
                    db += dhv * dtu[c]
                    dc += gy[c] * hc[c]
                    dhn[c] = dhv * an[c]
                dB[bi, t, col, n] = db
                dC[bi, t, col, n] = dc
            dur = du[bi, t, d0:e]
            ddr = ddl[bi, t, d0:e]
            Dr = Dv[d0:e]
            dDr = dD[bi, d0:e]
            for c in range(cw):
                dur[c] = dr[c] * sb[c] + Dr[c] * gy[c]
                dDr[c] += gy[c] * ur[c]
                v = gdt[c] + ur[c] * sb[c]
                if sp:
                    v *= np.float32(1.0) - _exp(-dr[c])
                ddr[c] = v

    @_jit(**_JIT)
    def _bwd(lo, hi, W, G, K, rev, sp, u, dt, Dv, At, An, B, C, hck, dy, du, ddl, dA, dD, dB, dC):
        """Tasks lo..hi, from the output gradient dy: du, ddl (delta's gradient) (b, L, d);
        dA (b, N, d) and dD (b, d) partials (one batch row each, summed by the caller); dB,
        dC (b, L, G * nblk, N) partials (one channel block each)."""
        L, d = u.shape[1], u.shape[2]
        N = At.shape[0]
        dg = d // G
        nblk = (dg + W - 1) // W
        hs = np.empty((K + 1, N, W), dtype=np.float32)
        ah = np.empty((K, N, W), dtype=np.float32)
        dh = np.empty((N, W), dtype=np.float32)
        gdt = np.empty(W, dtype=np.float32)
        sb = np.empty(W, dtype=np.float32)
        dtu = np.empty(W, dtype=np.float32)
        nck = (L + K - 1) // K
        for task in range(lo, hi):
            bi, g, blk, d0, cw = _task_of(task, G, nblk, dg, W)
            e = d0 + cw
            for n in range(N):
                for c in range(cw):
                    dh[n, c] = _ZERO
            for k in range(nck - 1, -1, -1):
                s0 = k * K
                m = min(L, s0 + K) - s0
                for n in range(N):
                    hk = hck[bi, k, n, d0:e]
                    for c in range(cw):
                        hs[0, n, c] = hk[c]
                _recompute(m, rev, s0, bi, g, d0, cw, u, dt, At, B, hs, ah)
                _walk(m, rev, sp, s0, bi, g, d0, cw, g * nblk + blk, u, dt, Dv, An, B, C, hs, ah, dh, dy, du, ddl,
                      dA, dD, dB, dC, gdt, sb, dtu)


    @_jit(**_JIT)
    def _conv_bwd(lo, hi, rev, act, xx, pre, dy, w, dxx, dwp, dbp):
        """Batch rows lo..hi of the depthwise conv (+ SiLU) backward, channel-last. xx
        (b, L + K - 1, d): the input padded by its context (before it, or after it for
        ``rev``); pre (b, L, d): the conv before the SiLU; tap j of position t reads
        xx[t + o_j], o_j = j (K - 1 - j for ``rev``). Writes dxx (zeroed by the caller)
        and this task's partials dwp[lo] (K, d), dbp[lo] (d)."""
        L, d = pre.shape[1], pre.shape[2]
        K = w.shape[0]
        gv = np.empty(d, dtype=np.float32)
        dw = dwp[lo]
        db = dbp[lo]
        for bi in range(lo, hi):
            for t in range(L):
                pr = pre[bi, t]
                gr = dy[bi, t]
                if act:
                    for c in range(d):
                        sg = np.float32(1.0) / (np.float32(1.0) + _exp(-pr[c]))
                        gv[c] = gr[c] * sg * (np.float32(1.0) + pr[c] * (np.float32(1.0) - sg))
                else:
                    for c in range(d):
                        gv[c] = gr[c]
                for c in range(d):
                    db[c] += gv[c]
                for j in range(K):
                    o = t + (K - 1 - j if rev else j)
                    xr = xx[bi, o]
                    dr = dxx[bi, o]
                    wr = w[j]
                    dwr = dw[j]
                    for c in range(d):
                        dr[c] += wr[c] * gv[c]
                        dwr[c] += gv[c] * xr[c]


def _split(fn, ntask: int, work: int, *args) -> None:
    """fn(lo, hi, *args) over the tasks, on torch's thread count (the GIL released)."""
    threads = min(ntask, _cpu._threads(work))
    if threads <= 1:
        fn(0, ntask, *args)
        return
    cuts = [ntask * i // threads for i in range(threads + 1)]
    futs = [_cpu._pool(threads - 1).submit(fn, cuts[i], cuts[i + 1], *args) for i in range(1, threads)]
    fn(cuts[0], cuts[1], *args)
    for f in futs:
        f.result()


def _geometry(b: int, d: int, G: int):
    if d % G:
        raise ValueError(f"d_inner={d} is not divisible by n_groups={G}")
    W = min(_W, d // G)
    nblk = -(-(d // G) // W)
    return W, nblk, b * G * nblk


class _CoreFn(torch.autograd.Function):
    """y = sum_n h C + D u with dt = softplus(delta + bias), all in fp32; see the module doc."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, bias, sp, rev):
        b, L, d = u.shape
        N, G = A.shape[1], B.shape[2]
        W, nblk, ntask = _geometry(b, d, G)
        At = _cpu._exp2_rates(A)
        f = lambda t: t.detach().float().contiguous()  # noqa: E731
        uu, xd, Bc, Cc = f(u), f(delta), f(B), f(C)
        Dv = f(D) if D is not None else torch.zeros(d)
        bv = f(bias) if bias is not None else torch.zeros(d)
        y = torch.empty(b, L, d, dtype=torch.float32)
        dt = torch.empty(b, L, d, dtype=torch.float32)
        hck = torch.empty(b, -(-L // _K), N, d, dtype=torch.float32)
        if L:
            _split(_fwd, ntask, b * L * d * N, W, G, _K, rev, sp, uu.numpy(), xd.numpy(), bv.numpy(), Dv.numpy(),
                   At, Bc.numpy(), Cc.numpy(), y.numpy(), dt.numpy(), hck.numpy())
        ctx.save_for_backward(uu, dt, A, Bc, Cc, Dv, hck)
        ctx.rev, ctx.sp, ctx.At = rev, sp, At
        ctx.dtypes = [None if t is None else t.dtype for t in (u, delta, A, B, C, D, bias)]
        return y

    @staticmethod
    def backward(ctx, gy):
        u, dt, A, B, C, Dv, hck = ctx.saved_tensors
        b, L, d = u.shape
        N, G = A.shape[1], B.shape[2]
        W, nblk, ntask = _geometry(b, d, G)
        An = np.ascontiguousarray(A.detach().float().numpy().T)
        At = ctx.At  # the forward's
        du, ddl = torch.empty_like(u), torch.empty_like(u)
        dA = torch.zeros(b, N, d, dtype=torch.float32)
        dD = torch.zeros(b, d, dtype=torch.float32)
        dB = torch.empty(b, L, G * nblk, N, dtype=torch.float32)
        dC = torch.empty(b, L, G * nblk, N, dtype=torch.float32)
        if L:
            _split(_bwd, ntask, 3 * b * L * d * N, W, G, _K, ctx.rev, ctx.sp, u.numpy(), dt.numpy(), Dv.numpy(),
                   At, An, B.numpy(), C.numpy(), hck.numpy(), gy.float().contiguous().numpy(), du.numpy(),
                   ddl.numpy(), dA.numpy(), dD.numpy(), dB.numpy(), dC.numpy())
        fold = lambda t: t.view(b, L, G, nblk, N).sum(3)  # noqa: E731
        grads = [du, ddl, dA.sum(0).T, fold(dB), fold(dC), dD.sum(0), ddl.sum((0, 1))]
        out = [None if dt_ is None or not need else g.to(dt_)
               for g, dt_, need in zip(grads, ctx.dtypes, ctx.needs_input_grad)]
        return (*out, None, None)


def _direction(u, delta, A, B, C, D, delta_bias, softplus, rev) -> Tensor:
    """One direction before the gate, fp32: core + D u."""
    return _CoreFn.apply(u, delta, A, B, C, D, delta_bias, bool(softplus), bool(rev))


def selective_scan_cpu_grad(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                            reverse=False) -> Tensor:
    """:func:`selective_scan_ref` (no initial or final state) with gradients to every
    input, compiled; y in u's dtype."""
    CALLS["scan"] += 1
    y = _direction(u, delta, A, B, C, D, delta_bias, delta_softplus, reverse)
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(u.dtype)


def bidirectional_selective_scan_cpu_grad(u_f, delta_f, A_f, B_f, C_f, u_r, delta_r, A_r, B_r, C_r,
                                          D_f=None, D_r=None, z=None, delta_bias_f=None,
                                          delta_bias_r=None, delta_softplus=False) -> Tensor:
    """:func:`bidirectional_selective_scan_ref` with gradients, compiled; the gate once on the sum."""
    CALLS["scan"] += 1
    y = (_direction(u_f, delta_f, A_f, B_f, C_f, D_f, delta_bias_f, delta_softplus, False)
         + _direction(u_r, delta_r, A_r, B_r, C_r, D_r, delta_bias_r, delta_softplus, True))
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(u_f.dtype)


class _ConvFn(torch.autograd.Function):
    """Depthwise conv (+ SiLU) with gradients to x, weight, bias and context: the forward
    is the compiled inference conv (before the SiLU, kept for the backward), the backward
    :func:`_conv_bwd`."""

    @staticmethod
    def forward(ctx, x, weight, bias, context, rev, act):
        b, L, d = x.shape
        K = weight.shape[-1]
        w = weight.reshape(d, K)
        pre = _cpu.conv1d_silu_cpu(x.detach().float(), w.detach(), None if bias is None else bias.detach(),
                                   None if context is None else context.detach(), rev, False)
        ctx.save_for_backward(x, w, context, pre)
        ctx.rev, ctx.act, ctx.shape, ctx.has_bias = rev, act, weight.shape, bias is not None
        return (F.silu(pre) if act else pre).to(x.dtype)

    @staticmethod
    def backward(ctx, gy):
        x, w, context, pre = ctx.saved_tensors
        b, L, d = x.shape
        K, km1 = w.shape[1], w.shape[1] - 1
        xf = x.detach().float()
        cf = (context.detach().float() if context is not None and km1 else xf.new_zeros(b, km1, d))
        xx = torch.cat([xf, cf] if ctx.rev else [cf, xf], dim=1).contiguous()
        dxx = torch.zeros_like(xx)
        dwp = torch.zeros(b, K, d, dtype=torch.float32)
        dbp = torch.zeros(b, d, dtype=torch.float32)
        wt = w.detach().float().T.contiguous()
        if b * L:
            _split(_conv_bwd, b, b * L * d * K, ctx.rev, ctx.act, xx.numpy(), pre.numpy(),
                   gy.float().contiguous().numpy(), wt.numpy(), dxx.numpy(), dwp.numpy(), dbp.numpy())
        dx = (dxx[:, :L] if ctx.rev else dxx[:, km1:]).to(x.dtype)
        dctx = None
        if context is not None and ctx.needs_input_grad[3]:
            dctx = (dxx[:, L:] if ctx.rev else dxx[:, :km1]).to(context.dtype)
        dw = dwp.sum(0).T.reshape(ctx.shape).to(w.dtype)
        db = dbp.sum(0) if ctx.has_bias else None
        return dx, dw, db, dctx, None, None


def conv1d_silu_cpu_grad(x, weight, bias=None, context=None, reverse=False, activation=True) -> Tensor:
    """:func:`conv1d_silu_ref` with gradients to x, weight, bias and context, compiled;
    returned in x's dtype."""
    CALLS["conv"] += 1
    return _ConvFn.apply(x, weight, bias, context, bool(reverse), bool(activation))
