"""Selective scan with gradients on CPU (numba): training and fine-tuning without a GPU.

The scan core ``y_t = sum_n h_t C_t``, ``h_t = exp(dt_t A) h_{t-1} + dt_t u_t B_t``
(h_{-1} = 0; with ``reverse`` walked from the end) is one autograd function whose
forward and backward are compiled loops (the polynomials and thread set-up of
:mod:`.cpu`). The forward keeps the fp32 state entering every ``K``-th position; the
backward recomputes each block of K states from it and walks the block backwards with
the adjoint ``dh``, writing du, ddt, dB, dC and per-row partials of dA. Nothing of
size (batch, length, d_inner, d_state) is ever made; the reference's autograd makes
several. Around the core, in PyTorch ops (autograd): ``dt = softplus(delta + bias)``,
``+ D u``, the ``silu(z)`` gate (for the bidirectional scan once, on the sum).

Used by :mod:`mambadna.kernels` for CPU tensors when a gradient is to come and numba
imports, without an initial or final state (those, chunked training, keep the
reference). Reference: :func:`.reference.selective_scan_ref`.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from . import cpu as _cpu
from .reference import _discretize

Tensor = torch.Tensor
_K = 16  # positions between kept states
_W = 128  # channels a task
CALLS = {"scan": 0}

if _cpu.numba is not None:
    _jit, _JIT, _exp2 = _cpu._jit, _cpu._JIT, _cpu._exp2
    _advance, _task_of, _work_arrays = _cpu._advance, _cpu._task_of, _cpu._work_arrays
    _ZERO = np.float32(0.0)

    @_jit(**_JIT)
    def _fwd(lo, hi, W, G, K, rev, u, dt, At, B, C, y, hck):
        """Tasks lo..hi: y (b, L, d) and the states entering every K-th step, hck
        (b, nck, N, d)."""
        L, d = u.shape[1], u.shape[2]
        N = At.shape[0]
        dg = d // G
        nblk = (dg + W - 1) // W
        h, dtv, dtu, acc = _work_arrays(N, W)
        for task in range(lo, hi):
            bi, g, blk, d0, cw = _task_of(task, G, nblk, dg, W)
            e = d0 + cw
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
                dr = dt[bi, t, d0:e]
                for c in range(cw):
                    dtv[c] = dr[c]
                    dtu[c] = dr[c] * ur[c]
                    acc[c] = _ZERO
                _advance(h, At, B, C, bi, t, g, d0, cw, dtv, dtu, acc)
                yr = y[bi, t, d0:e]
                for c in range(cw):
                    yr[c] = acc[c]

    @_jit(**_JIT)
    def _bwd(lo, hi, W, G, K, rev, u, dt, At, An, B, C, hck, dy, du, ddt, dA, dB, dC):
        """Tasks lo..hi, from the output gradient dy: du, ddt (b, L, d); dA (b, N, d)
        partials (one row each, summed by the caller); dB, dC (b, L, G * nblk, N)
        partials (one channel block each)."""
        L, d = u.shape[1], u.shape[2]
        N = At.shape[0]
        dg = d // G
        nblk = (dg + W - 1) // W
        hs = np.empty((K + 1, N, W), dtype=np.float32)
        dh = np.empty((N, W), dtype=np.float32)
        gdt = np.empty(W, dtype=np.float32)
        gdu = np.empty(W, dtype=np.float32)
        tb = np.empty(W, dtype=np.float32)
        tc = np.empty(W, dtype=np.float32)
        nck = (L + K - 1) // K
        for task in range(lo, hi):
            bi, g, blk, d0, cw = _task_of(task, G, nblk, dg, W)
            e = d0 + cw
            col = g * nblk + blk
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
                for j in range(m):  # the block's states again
                    t = L - 1 - (s0 + j) if rev else s0 + j
                    ur = u[bi, t, d0:e]
                    dr = dt[bi, t, d0:e]
                    for n in range(N):
                        bn = B[bi, t, g, n]
                        Ar = At[n, d0:e]
                        hp = hs[j, n]
                        hn = hs[j + 1, n]
                        for c in range(cw):
                            hn[c] = _exp2(dr[c] * Ar[c]) * hp[c] + dr[c] * ur[c] * bn
                for j in range(m - 1, -1, -1):
                    t = L - 1 - (s0 + j) if rev else s0 + j
                    ur = u[bi, t, d0:e]
                    dr = dt[bi, t, d0:e]
                    gy = dy[bi, t, d0:e]
                    for c in range(cw):
                        gdt[c] = _ZERO
                        gdu[c] = _ZERO
                    for n in range(N):
                        bn = B[bi, t, g, n]
                        cn = C[bi, t, g, n]
                        Ar = At[n, d0:e]
                        Anr = An[n, d0:e]
                        hp = hs[j, n]
                        hc = hs[j + 1, n]
                        dhn = dh[n]
                        dAr = dA[bi, n, d0:e]
                        for c in range(cw):
                            dhv = dhn[c] + gy[c] * cn
                            a = _exp2(dr[c] * Ar[c])
                            x = dhv * a * hp[c]
                            gdt[c] += x * Anr[c] + dhv * ur[c] * bn
                            dAr[c] += x * dr[c]
                            gdu[c] += dhv * dr[c] * bn
                            tb[c] = dhv * dr[c] * ur[c]
                            tc[c] = gy[c] * hc[c]
                            dhn[c] = dhv * a
                        sb = _ZERO
                        sc = _ZERO
                        for c in range(cw):
                            sb += tb[c]
                            sc += tc[c]
                        dB[bi, t, col, n] = sb
                        dC[bi, t, col, n] = sc
                    dur = du[bi, t, d0:e]
                    ddr = ddt[bi, t, d0:e]
                    for c in range(cw):
                        dur[c] = gdu[c]
                        ddr[c] = gdt[c]


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
    """y = sum_n h C over fp32 (u, dt, A, B, C); see the module doc."""

    @staticmethod
    def forward(ctx, u, dt, A, B, C, rev):
        b, L, d = u.shape
        N, G = A.shape[1], B.shape[2]
        W, nblk, ntask = _geometry(b, d, G)
        At = _cpu._exp2_rates(A)
        uu, dd = u.detach().contiguous(), dt.detach().contiguous()
        Bc, Cc = B.detach().contiguous(), C.detach().contiguous()
        y = torch.empty(b, L, d, dtype=torch.float32)
        hck = torch.empty(b, -(-L // _K), N, d, dtype=torch.float32)
        if L:
            _split(_fwd, ntask, b * L * d * N, W, G, _K, rev, uu.numpy(), dd.numpy(), At, Bc.numpy(),
                   Cc.numpy(), y.numpy(), hck.numpy())
        ctx.save_for_backward(uu, dd, A, Bc, Cc, hck)
        ctx.rev = rev
        return y

    @staticmethod
    def backward(ctx, gy):
        u, dt, A, B, C, hck = ctx.saved_tensors
        b, L, d = u.shape
        N, G = A.shape[1], B.shape[2]
        W, nblk, ntask = _geometry(b, d, G)
        An = np.ascontiguousarray(A.detach().numpy().T)
        At = _cpu._exp2_rates(A)
        du, ddt = torch.empty_like(u), torch.empty_like(u)
        dA = torch.zeros(b, N, d, dtype=torch.float32)
        dB = torch.empty(b, L, G * nblk, N, dtype=torch.float32)
        dC = torch.empty(b, L, G * nblk, N, dtype=torch.float32)
        if L:
            _split(_bwd, ntask, 3 * b * L * d * N, W, G, _K, ctx.rev, u.numpy(), dt.numpy(), At, An,
                   B.numpy(), C.numpy(), hck.numpy(), gy.float().contiguous().numpy(), du.numpy(),
                   ddt.numpy(), dA.numpy(), dB.numpy(), dC.numpy())
        fold = lambda t: t.view(b, L, G, nblk, N).sum(3)  # noqa: E731
        return du, ddt, dA.sum(0).T, fold(dB), fold(dC), None


def _direction(u, delta, A, B, C, D, delta_bias, softplus, rev) -> Tensor:
    """One direction before the gate, fp32: core + D u."""
    _, uf, dt = _discretize(u, delta, delta_bias, softplus)
    y = _CoreFn.apply(uf, dt, A.float(), B.float(), C.float(), bool(rev))
    return y if D is None else y + uf * D.float()


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
