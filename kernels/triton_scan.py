"""Fused Mamba-1 selective scan (S6) in Triton: chunked, parallel over the length.

Layout is channel-last: u, delta, z (batch, length, d_inner); B, C (batch, length,
n_groups, d_state); A (d_inner, d_state) fp32; D, delta_bias (d_inner,).

Algorithm (one direction), with chunks of ``T`` positions grouped into segments of
``CPS`` chunks; a program owns (segment, block of channels, batch row) and walks its
chunks in order, carrying the state:

1. ``_seg_state_kernel`` (only with more than one segment) -- every segment's state
   from a zero start, chunk by chunk: ``sum_t exp(A * W_t) * delta_t * B_t * u_t`` with
   ``W_t >= 0`` the log-decay from ``t`` to the chunk's end (only non-positive numbers
   are exponentiated), carried across chunks by ``exp(A * sum delta)``.
2. ``_chunk_combine_kernel`` -- the segment states are combined across segments (an
   associative scan), giving the state entering every segment.
3. ``_seg_output_kernel`` -- every segment rescans its chunks from its entering state
   (a scan along the chunk, one ``d_state`` column at a time, the entering state
   folded into the first row), forms ``y = C.h + D u``, gates it with ``silu(z)`` and
   writes it once; for training it also writes the state entering every chunk.

The backward pass is steps 1-2 on the adjoint (which runs the other way), then
``_seg_bwd_kernel``: each segment walks its chunks in the adjoint's direction, carrying
the adjoint, recomputes ``h`` from the stored chunk-entering state and forms all
gradients; the (batch, length, d_inner, d_state) states are never stored. A reverse
scan is the same kernels with the scan direction flipped (no flipped copies). The
bidirectional entry computes chunk states with the per-chunk kernels
(``_chunk_state_kernel`` + ``_chunk_combine_kernel``) and runs both directions' outputs
in one kernel (``_bidir_output_kernel``) with one output write; its backward is the
segment backward of each direction.
"""
from __future__ import annotations

import math
import os
from typing import Optional

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634

# Tunables (chosen on the H100; see benchmarks/NOTES_scan.md). Overridable for tests.
CONFIG = {
    "chunk": 8,           # positions per chunk (power of two)
    "block_d": 32,        # channels per program (32 per warp: one channel a thread)
    "warps_state": 1,
    "warps_out": 1,
    "warps_bwd": 1,
    "unroll_n": 1,        # unroll factor of the loop over d_state
    "combine_chunks": 32,  # chunks per block in the cross-chunk scan
    "combine_lanes": 128,  # (d_state * d_inner) lanes per program in the cross-chunk scan
    "warps_combine": 4,
    "target_programs": 4096,  # batch x d-blocks x segments to aim for (segment kernels)
    "single_pass_max_ns": 8,  # use one segment (single pass) when no more would be needed
    # register caps for the segment kernels (None: ptxas's choice, up to 255 with 1-warp
    # programs, i.e. ~8 warps per SM); a cap trades occupancy against spills
    "maxnreg_state": None,
    "maxnreg_out": None,
    "maxnreg_bwd": None,
}


def _regcap(key):
    v = CONFIG.get(key)
    return {} if v is None or _interpret() else {"maxnreg": int(v)}


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# ----------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------


@triton.jit
def _combine_fwd(a_l, x_l, a_r, x_r):
    # segment l then segment r (scan order): h = a_r * (a_l * h0 + x_l) + x_r
    return a_l * a_r, a_r * x_l + x_r


@triton.jit
def _combine_adj(L_l, Q_l, V_l, L_r, Q_r, V_r):
    # adjoint recursion lam_i = c_i + a_{i-1} * lam_{i-1} (scan order i): the multiplier
    # is the *previous* element's a. Segment = (last a, product of all a but the last,
    # value of lam at its last element from the c's inside it).
    return L_r, Q_l * L_l * Q_r, V_r + Q_r * L_l * V_l


@triton.jit
def _rows(pid_c, T: tl.constexpr, REV: tl.constexpr):
    """Positions of chunk pid_c in scan order: a reverse scan reads its chunk backwards
    (pointer arithmetic only), so every scan along the rows runs forward."""
    ar = tl.arange(0, T)
    if REV:
        ar = T - 1 - ar
    return pid_c.to(tl.int64) * T + ar


@triton.jit
def _softplus(v):
    return tl.where(v > 20.0, v, tl.log(1.0 + tl.exp(v)))


@triton.jit
def _load_dt(delta_ptr, bias_ptr, off, mask2, d_idx, mask_d,
             HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """delta (after bias and softplus) as fp32, 0 where masked; also the pre-activation."""
    v = tl.load(delta_ptr + off, mask=mask2, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d_idx, mask=mask_d, other=0.0).to(tl.float32)
        v = v + bias[None, :]
    if SOFTPLUS:
        dt = _softplus(v)
    else:
        dt = v
    dt = tl.where(mask2, dt, 0.0)
    return dt, v


@triton.jit
def _load_dt_pre(delta_ptr, off, mask2, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """_load_dt with the (BD,) bias already loaded (outside a loop over chunks)."""
    v = tl.load(delta_ptr + off, mask=mask2, other=0.0).to(tl.float32)
    if HAS_BIAS:
        v = v + bias[None, :]
    if SOFTPLUS:
        dt = _softplus(v)
    else:
        dt = v
    dt = tl.where(mask2, dt, 0.0)
    return dt, v


# ----------------------------------------------------------------------------------
# forward kernels
# ----------------------------------------------------------------------------------


@triton.jit(do_not_specialize=["SD"])
def _chunk_state_kernel(
    u_ptr, delta_ptr, bias_ptr, A_ptr, B_ptr, z_ptr,
    sloc_ptr, ssum_ptr,
    L, D, NC, DPG, SD,
    s_ub, s_ul, s_db, s_dl, s_Bb, s_Bl, s_Bg, s_zb, s_zl,
    N: tl.constexpr, T: tl.constexpr, BD: tl.constexpr, UNROLL: tl.constexpr,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, REV: tl.constexpr,
    ADJ: tl.constexpr, HAS_Z: tl.constexpr,
):
    """Local chunk state from zero, one program per (chunk, d-block, batch).

    Forward (ADJ=False): sum_t exp(A * W_t) * dt_t * u_t * B_t with W_t the log-decay
    from t to the chunk's far end in scan direction (exclusive of t).
    Adjoint (ADJ=True, u_ptr = gradient-times-gate, B_ptr = C): the adjoint runs in the
    opposite direction and its carried quantity includes a_t, so W_t is inclusive.
    Writes sloc[b, c, n, d] (fp32) and ssum[b, c, d] = sum_t dt_t.
    """
    pid_c = tl.program_id(0)
    pid_d = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    t_idx = _rows(pid_c, T, REV)
    d_idx = pid_d * BD + tl.arange(0, BD)
    mask_t = t_idx < L
    mask_d = d_idx < D
    mask2 = mask_t[:, None] & mask_d[None, :]
    grp = (pid_d * BD) // DPG
    dcol = d_idx * SD  # SD == 1 at run time; not specialised, so loads stay scalar

    off_d = pid_b * s_db + t_idx[:, None] * s_dl + dcol[None, :]
    dt, _ = _load_dt(delta_ptr, bias_ptr, off_d, mask2, d_idx, mask_d, HAS_BIAS, SOFTPLUS)
    off_u = pid_b * s_ub + t_idx[:, None] * s_ul + dcol[None, :]
    uu = tl.load(u_ptr + off_u, mask=mask2, other=0.0).to(tl.float32)
    if ADJ:
        v = uu
        if HAS_Z:
            zz = tl.load(z_ptr + pid_b * s_zb + t_idx[:, None] * s_zl + dcol[None, :],
                         mask=mask2, other=0.0).to(tl.float32)
            v = v * zz * tl.sigmoid(zz)
    else:
        v = uu * dt
    s_incl = tl.cumsum(dt, axis=0)
    s_tot = tl.sum(dt, axis=0)
    # scan direction: forward (REV False) runs t ascending.
    # forward state, forward scan:  W = s_tot - s_incl   (decay after t to chunk end)
    # forward state, reverse scan:  W = s_incl - dt      (decay before t to chunk start)
    # adjoint of forward scan (runs descending, includes a_t): W = s_incl
    # adjoint of reverse scan (runs ascending, includes a_t): W = s_tot - s_incl + dt
    # rows are in scan order (see _rows): the state decays from row t to the chunk's
    # last row by sum_{k>t} dt_k; the adjoint runs the other way and its carried value
    # includes a_t, so it decays from row t to the first row by sum_{k<=t} dt_k.
    if ADJ:
        W = s_incl
    else:
        W = s_tot[None, :] - s_incl
    b_base = pid_b * s_Bb + t_idx * s_Bl + grp * s_Bg
    out_base = (pid_b * NC + pid_c) * N * D
    for n in tl.range(0, N, loop_unroll_factor=UNROLL):
        a2 = tl.load(A_ptr + d_idx * N + n, mask=mask_d, other=0.0) * 1.4426950408889634
        bn = tl.load(B_ptr + b_base + n, mask=mask_t, other=0.0).to(tl.float32)
        w = tl.exp2(a2[None, :] * W) * v * bn[:, None]
        s = tl.sum(w, axis=0)
        tl.store(sloc_ptr + out_base + n * D + d_idx, s, mask=mask_d)
    tl.store(ssum_ptr + (pid_b * NC + pid_c) * D + d_idx, s_tot, mask=mask_d)


@triton.jit
def _chunk_combine_kernel(
    sloc_ptr, ssum_ptr, A_ptr, h0_ptr, hin_ptr, hT_ptr,
    D, NC,
    N: tl.constexpr, CB: tl.constexpr, BL: tl.constexpr,
    HAS_H0: tl.constexpr, REV: tl.constexpr,
):
    """Combine chunk states across chunks (scan over chunks, in blocks of CB).

    Lanes are (n, d) pairs flattened as n * D + d. hin[b, c] receives the state that
    enters chunk c in scan direction (REV: chunks visited from the last); hT (batch,
    D, N) the state after all chunks. h0 is (batch, D, N) fp32.
    """
    pid_b = tl.program_id(0).to(tl.int64)
    pid_l = tl.program_id(1)
    lanes = pid_l * BL + tl.arange(0, BL)
    mask_l = lanes < N * D
    n_idx = lanes // D
    d_idx = lanes % D
    a2 = tl.load(A_ptr + d_idx * N + n_idx, mask=mask_l, other=0.0) * 1.4426950408889634
    if HAS_H0:
        carry = tl.load(h0_ptr + pid_b * D * N + d_idx * N + n_idx, mask=mask_l,
                        other=0.0).to(tl.float32)
    else:
        carry = tl.zeros([BL], dtype=tl.float32)
    rows = tl.arange(0, CB)
    for k0 in range(0, NC, CB):
        k = k0 + rows
        valid = k < NC
        if REV:
            c = NC - 1 - k
        else:
            c = k
        c = c.to(tl.int64)
        m2 = valid[:, None] & mask_l[None, :]
        x = tl.load(sloc_ptr + (pid_b * NC + c[:, None]) * N * D + lanes[None, :],
                    mask=m2, other=0.0)
        s = tl.load(ssum_ptr + (pid_b * NC + c[:, None]) * D + d_idx[None, :],
                    mask=m2, other=0.0)
        a = tl.exp2(a2[None, :] * s)
        a = tl.where(m2, a, 1.0)
        P, X = tl.associative_scan((a, x), 0, _combine_fwd)
        hend = X + P * carry[None, :]
        # state entering chunk k is carry (k == k0) or hend of row k-1
        if REV:
            c0 = NC - 1 - k0
        else:
            c0 = k0
        tl.store(hin_ptr + (pid_b * NC + c0) * N * D + lanes, carry, mask=mask_l)
        if REV:
            cn = c - 1
        else:
            cn = c + 1
        mnext = (k + 1 < NC) & (rows < CB - 1)
        tl.store(hin_ptr + (pid_b * NC + cn[:, None]) * N * D + lanes[None, :], hend,
                 mask=mnext[:, None] & mask_l[None, :])
        carry = tl.sum(tl.where(rows[:, None] == CB - 1, hend, 0.0), axis=0)
    tl.store(hT_ptr + pid_b * D * N + d_idx * N + n_idx, carry, mask=mask_l)


@triton.jit
def _chunk_y(
    u_ptr, delta_ptr, bias_ptr, A_ptr, B_ptr, C_ptr, D_ptr, hin_ptr,
    pid_b, pid_c, t_idx, d_idx, dcol, mask_t, mask_d, mask2, grp,
    D, NC, s_ub, s_ul, s_db, s_dl, s_Bb, s_Bl, s_Bg, s_Cb, s_Cl, s_Cg,
    N: tl.constexpr, T: tl.constexpr, BD: tl.constexpr, UNROLL: tl.constexpr,
    HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, REV: tl.constexpr,
):
    """Ungated output C.h + D u of one chunk tile (T, BD), fp32."""
    off_d = pid_b * s_db + t_idx[:, None] * s_dl + dcol[None, :]
    dt, _ = _load_dt(delta_ptr, bias_ptr, off_d, mask2, d_idx, mask_d, HAS_BIAS, SOFTPLUS)
    off_u = pid_b * s_ub + t_idx[:, None] * s_ul + dcol[None, :]
    uu = tl.load(u_ptr + off_u, mask=mask2, other=0.0).to(tl.float32)
    dtu = dt * uu
    y = tl.zeros([T, BD], dtype=tl.float32)
    b_base = pid_b * s_Bb + t_idx * s_Bl + grp * s_Bg
    c_base = pid_b * s_Cb + t_idx * s_Cl + grp * s_Cg
    h_base = (pid_b * NC + pid_c) * N * D
    for n in tl.range(0, N, loop_unroll_factor=UNROLL):
        a2 = tl.load(A_ptr + d_idx * N + n, mask=mask_d, other=0.0) * 1.4426950408889634
        bn = tl.load(B_ptr + b_base + n, mask=mask_t, other=0.0).to(tl.float32)
        cn = tl.load(C_ptr + c_base + n, mask=mask_t, other=0.0).to(tl.float32)
        h0 = tl.load(hin_ptr + h_base + n * D + d_idx, mask=mask_d, other=0.0)
        a = tl.exp2(a2[None, :] * dt)
        x = dtu * bn[:, None]
        P, X = tl.associative_scan((a, x), 0, _combine_fwd)
        h = X + P * h0[None, :]
        y += h * cn[:, None]
    if HAS_D:
        dd = tl.load(D_ptr + d_idx, mask=mask_d, other=0.0).to(tl.float32)
        y += uu * dd[None, :]
    return y


@triton.jit(do_not_specialize=["SD"])
def _bidir_output_kernel(
    u_ptr, delta_ptr, bias_ptr, A_ptr, B_ptr, C_ptr, D_ptr, hin_ptr,
    u2_ptr, delta2_ptr, bias2_ptr, A2_ptr, B2_ptr, C2_ptr, D2_ptr, hin2_ptr,
    z_ptr, out_ptr,
    L, D, NC, DPG, SD,
    s_ub, s_ul, s_db, s_dl, s_Bb, s_Bl, s_Bg, s_Cb, s_Cl, s_Cg,
    s2_ub, s2_ul, s2_db, s2_dl, s2_Bb, s2_Bl, s2_Bg, s2_Cb, s2_Cl, s2_Cg,
    s_zb, s_zl, s_ob, s_ol,
    N: tl.constexpr, T: tl.constexpr, BD: tl.constexpr, UNROLL: tl.constexpr,
    HAS_D: tl.constexpr, HAS_D2: tl.constexpr, HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_BIAS2: tl.constexpr, SOFTPLUS: tl.constexpr,
):
    """Forward scan (first parameter set) + reverse scan (second), gated, one write."""
    pid_c = tl.program_id(0)
    pid_d = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    t_idx = _rows(pid_c, T, False)
    t_rev = _rows(pid_c, T, True)
    d_idx = pid_d * BD + tl.arange(0, BD)
    mask_t = t_idx < L
    mask_d = d_idx < D
    mask_tr = t_rev < L
    mask2r = mask_tr[:, None] & mask_d[None, :]
    mask2 = mask_t[:, None] & mask_d[None, :]
    grp = (pid_d * BD) // DPG
    dcol = d_idx * SD  # SD == 1 at run time; not specialised, so loads stay scalar
    y = _chunk_y(u_ptr, delta_ptr, bias_ptr, A_ptr, B_ptr, C_ptr, D_ptr, hin_ptr,
                 pid_b, pid_c, t_idx, d_idx, dcol, mask_t, mask_d, mask2, grp,
                 D, NC, s_ub, s_ul, s_db, s_dl, s_Bb, s_Bl, s_Bg, s_Cb, s_Cl, s_Cg,
                 N, T, BD, UNROLL, HAS_D, HAS_BIAS, SOFTPLUS, False)
    # the reverse scan reads the chunk backwards; flip its rows back before the sum
    y_r = _chunk_y(u2_ptr, delta2_ptr, bias2_ptr, A2_ptr, B2_ptr, C2_ptr, D2_ptr, hin2_ptr,
                  pid_b, pid_c, t_rev, d_idx, dcol, mask_tr, mask_d, mask2r, grp,
                  D, NC, s2_ub, s2_ul, s2_db, s2_dl, s2_Bb, s2_Bl, s2_Bg, s2_Cb, s2_Cl,
                  s2_Cg, N, T, BD, UNROLL, HAS_D2, HAS_BIAS2, SOFTPLUS, True)
    y += tl.flip(y_r, 0)
    if HAS_Z:
        zz = tl.load(z_ptr + pid_b * s_zb + t_idx[:, None] * s_zl + dcol[None, :],
                     mask=mask2, other=0.0).to(tl.float32)
        y = y * zz * tl.sigmoid(zz)
    tl.store(out_ptr + pid_b * s_ob + t_idx[:, None] * s_ol + dcol[None, :],
             y.to(out_ptr.dtype.element_ty), mask=mask2)


# ----------------------------------------------------------------------------------
# segment kernels: a program owns (segment of CPS chunks, d-block, batch) and walks its
# chunks in order, carrying the (N, BD) state from chunk to chunk. Only per-segment
# states cross programs; per-chunk states are written only when the backward needs
# them. The carried state sits in the program's own output slice (hend / sloc / mend):
# each thread re-reads only values it wrote itself (L1 hits, no barrier), which keeps
# the loop over d_state a plain loop (an unrolled loop with the state in registers ran
# to 255 registers and spilled: ptxas hoists every B/C load). These kernels take A
# transposed, (d_state, d_inner) contiguous, so every load runs along d.
# ----------------------------------------------------------------------------------


@triton.jit(do_not_specialize=["SD", "NR"])
def _seg_state_kernel(
    u_ptr, delta_ptr, bias_ptr, A_ptr, B_ptr, z_ptr,
    sloc_ptr, ssum_ptr,
    L, D, NS, CPS, DPG, SD, NR,
    s_ub, s_ul, s_db, s_dl, s_Bb, s_Bl, s_Bg, s_zb, s_zl,
    N: tl.constexpr, NP: tl.constexpr, T: tl.constexpr, BD: tl.constexpr,
    UNROLL: tl.constexpr,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, REV: tl.constexpr,
    ADJ: tl.constexpr, HAS_Z: tl.constexpr, DESC: tl.constexpr,
):
    """State of one segment from zero (forward, or adjoint when ADJ), and its sum of dt.

    Chunks are visited in the carried quantity's direction (DESC: descending chunk
    index); within a chunk rows are in scan order (see _rows). Forward: the state after
    the segment; adjoint: a_first * lambda_first of the segment from the gradients inside.
    Writes sloc[b, s, n, d] and ssum[b, s, d].
    """
    pid_s = tl.program_id(0)
    pid_d = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    d_idx = pid_d * BD + tl.arange(0, BD)
    mask_d = d_idx < D
    n_ar = tl.arange(0, NP)
    mask_nd = (n_ar < N)[:, None] & mask_d[None, :]
    nd_off = n_ar[:, None] * D + d_idx[None, :]
    grp = (pid_d * BD) // DPG
    dcol = d_idx * SD  # SD == 1 at run time; not specialised, so loads stay scalar
    base = (pid_b * NS + pid_s) * N * D
    # the running state lives in sloc (each thread re-reads only what it wrote)
    tl.store(sloc_ptr + base + nd_off, tl.zeros([NP, BD], dtype=tl.float32), mask=mask_nd)
    stot = tl.zeros([BD], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d_idx, mask=mask_d, other=0.0).to(tl.float32)
    else:
        bias = tl.zeros([BD], dtype=tl.float32)
    for k in range(CPS):
        if DESC:
            c = pid_s * CPS + CPS - 1 - k
        else:
            c = pid_s * CPS + k
        # 64-bit scalar chunk base + 32-bit in-chunk offsets (keeps registers low)
        row0 = c.to(tl.int64) * T
        lr = tl.arange(0, T)
        if REV:
            lr = T - 1 - lr
        mask_t = lr < L - row0
        mask2 = mask_t[:, None] & mask_d[None, :]
        off_d = (pid_b * s_db + row0 * s_dl) + (lr[:, None] * s_dl + dcol[None, :])
        dt, _ = _load_dt_pre(delta_ptr, off_d, mask2, bias, HAS_BIAS, SOFTPLUS)
        uu = tl.load(u_ptr + (pid_b * s_ub + row0 * s_ul) + (lr[:, None] * s_ul + dcol[None, :]),
                     mask=mask2, other=0.0).to(tl.float32)
        if ADJ:
            v = uu
            if HAS_Z:
                zz = tl.load(z_ptr + (pid_b * s_zb + row0 * s_zl) + (lr[:, None] * s_zl + dcol[None, :]),
                             mask=mask2, other=0.0).to(tl.float32)
                v = v * zz * tl.sigmoid(zz)
        else:
            v = uu * dt
        s_incl = tl.cumsum(dt, axis=0)
        s_tot = tl.sum(dt, axis=0)
        if ADJ:
            W = s_incl
        else:
            W = s_tot[None, :] - s_incl
        b_base = B_ptr + (pid_b * s_Bb + row0 * s_Bl + grp * s_Bg) + lr * s_Bl
        # row n+1's loads are issued before row n's store (software prefetch)
        a2_nx = tl.load(A_ptr + d_idx, mask=mask_d, other=0.0) * 1.4426950408889634
        bn_nx = tl.load(b_base, mask=mask_t, other=0.0).to(tl.float32)
        prev_nx = tl.load(sloc_ptr + base + d_idx, mask=mask_d, other=0.0)
        for n in tl.range(0, NR, loop_unroll_factor=UNROLL):
            a2 = a2_nx
            bn = bn_nx
            prev = prev_nx
            n1 = (n + 1) % NR  # wraps to row 0 on the last row (loaded, unused)
            a2_nx = tl.load(A_ptr + n1 * D + d_idx, mask=mask_d, other=0.0) * 1.4426950408889634
            bn_nx = tl.load(b_base + n1, mask=mask_t, other=0.0).to(tl.float32)
            prev_nx = tl.load(sloc_ptr + base + n1 * D + d_idx, mask=mask_d, other=0.0)
            s = tl.sum(tl.exp2(a2[None, :] * W) * v * bn[:, None], axis=0)
            tl.store(sloc_ptr + base + n * D + d_idx, tl.exp2(a2 * s_tot) * prev + s,
                     mask=mask_d)
        stot += s_tot
    tl.store(ssum_ptr + (pid_b * NS + pid_s) * D + d_idx, stot, mask=mask_d)


@triton.jit(do_not_specialize=["SD", "NR"])
def _seg_output_kernel(
    u_ptr, delta_ptr, bias_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr,
    hseg_ptr, out_ptr, hchunk_ptr, hend_ptr,
    L, D, NC, NS, CPS, DPG, SD, NR,
    s_ub, s_ul, s_db, s_dl, s_Bb, s_Bl, s_Bg, s_Cb, s_Cl, s_Cg, s_zb, s_zl, s_ob, s_ol,
    N: tl.constexpr, NP: tl.constexpr, T: tl.constexpr, BD: tl.constexpr,
    UNROLL: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr, REV: tl.constexpr, HAS_INIT: tl.constexpr,
    STORE: tl.constexpr,
):
    """Outputs of one segment from its entering state hseg[b, s] (N, D), carried across
    its chunks in scan order. STORE: also the state entering every chunk,
    hchunk[b, c, n, d] (for the backward; NC = NS * CPS, padded). hend[b, s]: the state after the segment."""
    pid_s = tl.program_id(0)
    pid_d = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    d_idx = pid_d * BD + tl.arange(0, BD)
    mask_d = d_idx < D
    n_ar = tl.arange(0, NP)
    mask_nd = (n_ar < N)[:, None] & mask_d[None, :]
    nd_off = n_ar[:, None] * D + d_idx[None, :]
    grp = (pid_d * BD) // DPG
    dcol = d_idx * SD  # SD == 1 at run time; not specialised, so loads stay scalar
    seg_base = (pid_b * NS + pid_s) * N * D
    # the running state lives in hend (each thread re-reads only what it wrote)
    if HAS_INIT:
        init = tl.load(hseg_ptr + seg_base + nd_off, mask=mask_nd, other=0.0)
    else:
        init = tl.zeros([NP, BD], dtype=tl.float32)
    tl.store(hend_ptr + seg_base + nd_off, init, mask=mask_nd)
    if HAS_D:
        dd = tl.load(D_ptr + d_idx, mask=mask_d, other=0.0).to(tl.float32)
    first = (tl.arange(0, T) == 0)[:, None]
    last = (tl.arange(0, T) == T - 1)[:, None]
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d_idx, mask=mask_d, other=0.0).to(tl.float32)
    else:
        bias = tl.zeros([BD], dtype=tl.float32)
    for k in range(CPS):
        if REV:
            c = pid_s * CPS + CPS - 1 - k
        else:
            c = pid_s * CPS + k
        # 64-bit scalar chunk base + 32-bit in-chunk offsets (keeps registers low)
        row0 = c.to(tl.int64) * T
        lr = tl.arange(0, T)
        if REV:
            lr = T - 1 - lr
        mask_t = lr < L - row0
        mask2 = mask_t[:, None] & mask_d[None, :]
        off_d = (pid_b * s_db + row0 * s_dl) + (lr[:, None] * s_dl + dcol[None, :])
        dt, _ = _load_dt_pre(delta_ptr, off_d, mask2, bias, HAS_BIAS, SOFTPLUS)
        uu = tl.load(u_ptr + (pid_b * s_ub + row0 * s_ul) + (lr[:, None] * s_ul + dcol[None, :]),
                     mask=mask2, other=0.0).to(tl.float32)
        dtu = dt * uu
        y = tl.zeros([T, BD], dtype=tl.float32)
        b_base = B_ptr + (pid_b * s_Bb + row0 * s_Bl + grp * s_Bg) + lr * s_Bl
        c_base = C_ptr + (pid_b * s_Cb + row0 * s_Cl + grp * s_Cg) + lr * s_Cl
        # row n+1's loads are issued before row n's store (software prefetch): the
        # compiler cannot move a load above a store it cannot prove disjoint
        a2_nx = tl.load(A_ptr + d_idx, mask=mask_d, other=0.0) * 1.4426950408889634
        h0_nx = tl.load(hend_ptr + seg_base + d_idx, mask=mask_d, other=0.0)
        bn_nx = tl.load(b_base, mask=mask_t, other=0.0).to(tl.float32)
        cn_nx = tl.load(c_base, mask=mask_t, other=0.0).to(tl.float32)
        for n in tl.range(0, NR, loop_unroll_factor=UNROLL):
            a2 = a2_nx
            h0 = h0_nx
            bn = bn_nx
            cn = cn_nx
            n1 = (n + 1) % NR  # wraps to row 0 on the last row (loaded, unused)
            a2_nx = tl.load(A_ptr + n1 * D + d_idx, mask=mask_d, other=0.0) * 1.4426950408889634
            h0_nx = tl.load(hend_ptr + seg_base + n1 * D + d_idx, mask=mask_d, other=0.0)
            bn_nx = tl.load(b_base + n1, mask=mask_t, other=0.0).to(tl.float32)
            cn_nx = tl.load(c_base + n1, mask=mask_t, other=0.0).to(tl.float32)
            if STORE:  # per n (a whole (N, BD) tile here kept ~90 more registers live)
                tl.store(hchunk_ptr + (pid_b * NC + c) * N * D + n * D + d_idx, h0,
                         mask=mask_d)
            a = tl.exp2(a2[None, :] * dt)
            # the entering state folds into the first row: the scan value is h itself
            x = dtu * bn[:, None] + tl.where(first, a * h0[None, :], 0.0)
            _, h = tl.associative_scan((a, x), 0, _combine_fwd)
            y += h * cn[:, None]
            tl.store(hend_ptr + seg_base + n * D + d_idx, tl.sum(tl.where(last, h, 0.0), axis=0),
                     mask=mask_d)
        if HAS_D:
            y += uu * dd[None, :]
        if HAS_Z:
            zz = tl.load(z_ptr + (pid_b * s_zb + row0 * s_zl) + (lr[:, None] * s_zl + dcol[None, :]),
                         mask=mask2, other=0.0).to(tl.float32)
            y = y * zz * tl.sigmoid(zz)
        tl.store(out_ptr + (pid_b * s_ob + row0 * s_ol) + (lr[:, None] * s_ol + dcol[None, :]),
                 y.to(out_ptr.dtype.element_ty), mask=mask2)


@triton.jit(do_not_specialize=["SD", "NR"])
def _seg_bwd_kernel(
    u_ptr, delta_ptr, bias_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, g_ptr,
    hchunk_ptr, mseg_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dB_ptr, dC_ptr, dA_ptr, dD_ptr, dbias_ptr, mend_ptr,
    L, D, NC, NS, CPS, DPG, SD, NR,
    s_ub, s_ul, s_db, s_dl, s_Bb, s_Bl, s_Bg, s_Cb, s_Cl, s_Cg, s_zb, s_zl, s_gb, s_gl,
    s_dBb, s_dBl, s_dBg, s_dCb, s_dCl, s_dCg,
    N: tl.constexpr, NP: tl.constexpr, T: tl.constexpr, BD: tl.constexpr,
    UNROLL: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr, REV: tl.constexpr, ACC_DZ: tl.constexpr,
    HAS_INIT: tl.constexpr,
):
    """All gradients of one segment. Chunks are visited in the adjoint's direction,
    carrying a_first * lambda_first (entering value mseg[b, s]); h is recomputed from the
    stored state entering each chunk (hchunk). dB, dC: fp32 atomics across d-blocks;
    dA partials (b, NS, N, D); dD, dbias partials (b, NS, D); mend[b, s]: the adjoint
    carried out of the segment (d h_entering)."""
    pid_s = tl.program_id(0)
    pid_d = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    d_idx = pid_d * BD + tl.arange(0, BD)
    mask_d = d_idx < D
    n_ar = tl.arange(0, NP)
    mask_nd = (n_ar < N)[:, None] & mask_d[None, :]
    nd_off = n_ar[:, None] * D + d_idx[None, :]
    grp = (pid_d * BD) // DPG
    dcol = d_idx * SD  # SD == 1 at run time; not specialised, so loads stay scalar
    seg_base = (pid_b * NS + pid_s) * N * D
    # the running adjoint lives in mend, the dA sums in dA (each thread re-reads only
    # what it wrote)
    if HAS_INIT:
        init = tl.load(mseg_ptr + seg_base + nd_off, mask=mask_nd, other=0.0)
    else:
        init = tl.zeros([NP, BD], dtype=tl.float32)
    tl.store(mend_ptr + seg_base + nd_off, init, mask=mask_nd)
    tl.store(dA_ptr + seg_base + nd_off, tl.zeros([NP, BD], dtype=tl.float32), mask=mask_nd)
    dDacc = tl.zeros([BD], dtype=tl.float32)
    dbacc = tl.zeros([BD], dtype=tl.float32)
    if HAS_D:
        dd = tl.load(D_ptr + d_idx, mask=mask_d, other=0.0).to(tl.float32)
    first = (tl.arange(0, T) == 0)[:, None]
    ncol = tl.arange(0, NP)[None, :]
    last = (tl.arange(0, T) == T - 1)[:, None]
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d_idx, mask=mask_d, other=0.0).to(tl.float32)
    else:
        bias = tl.zeros([BD], dtype=tl.float32)
    for k in range(CPS):
        if REV:
            c = pid_s * CPS + k
        else:
            c = pid_s * CPS + CPS - 1 - k
        # 64-bit scalar chunk base + 32-bit in-chunk offsets (keeps registers low)
        row0 = c.to(tl.int64) * T
        lr = tl.arange(0, T)
        if REV:
            lr = T - 1 - lr
        mask_t = lr < L - row0
        mask2 = mask_t[:, None] & mask_d[None, :]
        off_d = (pid_b * s_db + row0 * s_dl) + (lr[:, None] * s_dl + dcol[None, :])
        dt, vpre = _load_dt_pre(delta_ptr, off_d, mask2, bias, HAS_BIAS, SOFTPLUS)
        uu = tl.load(u_ptr + (pid_b * s_ub + row0 * s_ul) + (lr[:, None] * s_ul + dcol[None, :]),
                     mask=mask2, other=0.0).to(tl.float32)
        gout = tl.load(g_ptr + (pid_b * s_gb + row0 * s_gl) + (lr[:, None] * s_gl + dcol[None, :]),
                       mask=mask2, other=0.0).to(tl.float32)
        if HAS_Z:
            zz = tl.load(z_ptr + (pid_b * s_zb + row0 * s_zl) + (lr[:, None] * s_zl + dcol[None, :]),
                         mask=mask2, other=0.0).to(tl.float32)
            sz = tl.sigmoid(zz)
            gy = gout * zz * sz
        else:
            gy = gout
        dtu = dt * uu
        du = tl.zeros([T, BD], dtype=tl.float32)
        ddt = tl.zeros([T, BD], dtype=tl.float32)
        y = tl.zeros([T, BD], dtype=tl.float32)
        ones = tl.full([T, BD], 1.0, dtype=tl.float32)
        dBt = tl.zeros([T, NP], dtype=tl.float32)
        dCt = tl.zeros([T, NP], dtype=tl.float32)
        b_base = B_ptr + (pid_b * s_Bb + row0 * s_Bl + grp * s_Bg) + lr * s_Bl
        c_base = C_ptr + (pid_b * s_Cb + row0 * s_Cl + grp * s_Cg) + lr * s_Cl
        db_base = dB_ptr + (pid_b * s_dBb + row0 * s_dBl + grp * s_dBg) + lr * s_dBl
        dc_base = dC_ptr + (pid_b * s_dCb + row0 * s_dCl + grp * s_dCg) + lr * s_dCl
        # row n+1's loads are issued before row n's stores (software prefetch)
        hc_base = hchunk_ptr + (pid_b * NC + c) * N * D
        an_nx = tl.load(A_ptr + d_idx, mask=mask_d, other=0.0)
        h0_nx = tl.load(hc_base + d_idx, mask=mask_d, other=0.0)
        m0_nx = tl.load(mend_ptr + seg_base + d_idx, mask=mask_d, other=0.0)
        dA_nx = tl.load(dA_ptr + seg_base + d_idx, mask=mask_d, other=0.0)
        bn_nx = tl.load(b_base, mask=mask_t, other=0.0).to(tl.float32)
        cn_nx = tl.load(c_base, mask=mask_t, other=0.0).to(tl.float32)
        for n in tl.range(0, NR, loop_unroll_factor=UNROLL):
            an = an_nx
            h0 = h0_nx
            m0 = m0_nx
            dA_n = dA_nx
            bn = bn_nx
            cn = cn_nx
            n1 = (n + 1) % NR  # wraps to row 0 on the last row (loaded, unused)
            an_nx = tl.load(A_ptr + n1 * D + d_idx, mask=mask_d, other=0.0)
            h0_nx = tl.load(hc_base + n1 * D + d_idx, mask=mask_d, other=0.0)
            m0_nx = tl.load(mend_ptr + seg_base + n1 * D + d_idx, mask=mask_d, other=0.0)
            dA_nx = tl.load(dA_ptr + seg_base + n1 * D + d_idx, mask=mask_d, other=0.0)
            bn_nx = tl.load(b_base + n1, mask=mask_t, other=0.0).to(tl.float32)
            cn_nx = tl.load(c_base + n1, mask=mask_t, other=0.0).to(tl.float32)
            a = tl.exp2((an * 1.4426950408889634)[None, :] * dt)
            x = dtu * bn[:, None]
            _, h = tl.associative_scan((a, x + tl.where(first, a * h0[None, :], 0.0)), 0,
                                       _combine_fwd)
            # lambda_t = gy_t C_t + a_{t+1} lambda_{t+1}; the later chunks enter at the
            # last row (m0 = a_next * lambda_next), so the scan value is lambda itself
            cc = gy * cn[:, None] + tl.where(last, m0[None, :], 0.0)
            _, _, lam = tl.associative_scan((a, ones, cc), 0, _combine_adj, reverse=True)
            tl.store(mend_ptr + seg_base + n * D + d_idx,
                     tl.sum(tl.where(first, a * lam, 0.0), axis=0), mask=mask_d)
            if HAS_Z:
                y += h * cn[:, None]
            # reduce over the d-block now; one (T, NP) atomic per chunk after the n loop
            lam_dt = lam * dt
            dBt = tl.where(ncol == n, tl.sum(lam_dt * uu, axis=1)[:, None], dBt)
            dCt = tl.where(ncol == n, tl.sum(gy * h, axis=1)[:, None], dCt)
            du += lam_dt * bn[:, None]
            hmx = h - x  # = a_t * h_{t-1}
            ddt += lam * (uu * bn[:, None] + an[None, :] * hmx)
            tl.store(dA_ptr + seg_base + n * D + d_idx, dA_n + tl.sum(lam_dt * hmx, axis=0),
                     mask=mask_d)
        mask_tn = mask_t[:, None] & (ncol < N)
        tl.atomic_add(db_base[:, None] + ncol, dBt, mask=mask_tn)
        tl.atomic_add(dc_base[:, None] + ncol, dCt, mask=mask_tn)
        if HAS_D:
            du += gy * dd[None, :]
            dDacc += tl.sum(gy * uu, axis=0)
        off_o = (pid_b * L * D + row0 * D) + (lr[:, None] * D + dcol[None, :])
        if HAS_Z:
            if HAS_D:
                y += uu * dd[None, :]
            dz = gout * y * sz * (1.0 + zz * (1.0 - sz))
            if ACC_DZ:
                dz += tl.load(dz_ptr + off_o, mask=mask2, other=0.0)
            tl.store(dz_ptr + off_o, dz.to(dz_ptr.dtype.element_ty), mask=mask2)
        if SOFTPLUS:
            ddt = ddt * tl.sigmoid(vpre)
        ddt = tl.where(mask2, ddt, 0.0)
        if HAS_BIAS:
            dbacc += tl.sum(ddt, axis=0)
        tl.store(du_ptr + off_o, du.to(du_ptr.dtype.element_ty), mask=mask2)
        tl.store(ddelta_ptr + off_o, ddt.to(ddelta_ptr.dtype.element_ty), mask=mask2)
    if HAS_D:
        tl.store(dD_ptr + (pid_b * NS + pid_s) * D + d_idx, dDacc, mask=mask_d)
    if HAS_BIAS:
        tl.store(dbias_ptr + (pid_b * NS + pid_s) * D + d_idx, dbacc, mask=mask_d)


# ----------------------------------------------------------------------------------
# single-step update
# ----------------------------------------------------------------------------------


@triton.jit
def _state_update_kernel(
    state_ptr, u_ptr, delta_ptr, bias_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr,
    out_ptr, new_state_ptr,
    D, DPG,
    s_sb, s_sd, s_ub, s_db, s_Bb, s_Bg, s_Cb, s_Cg, s_zb,
    N: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
):
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    d_idx = pid_d * BD + tl.arange(0, BD)
    n_idx = tl.arange(0, BN)
    mask_d = d_idx < D
    mask_n = n_idx < N
    m2 = mask_d[:, None] & mask_n[None, :]
    grp = d_idx // DPG
    v = tl.load(delta_ptr + pid_b * s_db + d_idx, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        v += tl.load(bias_ptr + d_idx, mask=mask_d, other=0.0).to(tl.float32)
    if SOFTPLUS:
        dt = _softplus(v)
    else:
        dt = v
    uu = tl.load(u_ptr + pid_b * s_ub + d_idx, mask=mask_d, other=0.0).to(tl.float32)
    A = tl.load(A_ptr + d_idx[:, None] * N + n_idx[None, :], mask=m2, other=0.0)
    Bv = tl.load(B_ptr + pid_b * s_Bb + grp[:, None] * s_Bg + n_idx[None, :], mask=m2,
                 other=0.0).to(tl.float32)
    Cv = tl.load(C_ptr + pid_b * s_Cb + grp[:, None] * s_Cg + n_idx[None, :], mask=m2,
                 other=0.0).to(tl.float32)
    s = tl.load(state_ptr + pid_b * s_sb + d_idx[:, None] * s_sd + n_idx[None, :], mask=m2,
                other=0.0).to(tl.float32)
    h = tl.exp2(A * 1.4426950408889634 * dt[:, None]) * s + (dt * uu)[:, None] * Bv
    y = tl.sum(h * Cv, axis=1)
    if HAS_D:
        y += uu * tl.load(D_ptr + d_idx, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_Z:
        zz = tl.load(z_ptr + pid_b * s_zb + d_idx, mask=mask_d, other=0.0).to(tl.float32)
        y = y * zz * tl.sigmoid(zz)
    tl.store(new_state_ptr + pid_b * D * N + d_idx[:, None] * N + n_idx[None, :], h, mask=m2)
    tl.store(out_ptr + pid_b * D + d_idx, y.to(out_ptr.dtype.element_ty), mask=mask_d)


# ----------------------------------------------------------------------------------
# host side
# ----------------------------------------------------------------------------------


def _lastdim_contig(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    if t is None:
        return None
    return t if t.stride(-1) == 1 else t.contiguous()


def _block_d(d_inner: int, dpg: int) -> int:
    bd = CONFIG["block_d"]
    low = dpg & -dpg  # largest power of two dividing the group width
    return max(1, min(bd, low, triton.next_power_of_2(d_inner)))


class _Geom:
    def __init__(self, u, A, B):
        self.batch, self.L, self.D = u.shape
        self.N = A.shape[1]
        self.G = B.shape[2]
        if self.D % self.G:
            raise ValueError(f"d_inner={self.D} is not divisible by n_groups={self.G}")
        self.DPG = self.D // self.G
        self.T = CONFIG["chunk"]
        self.NC = triton.cdiv(self.L, self.T)
        self.BD = _block_d(self.D, self.DPG)
        self.ND = triton.cdiv(self.D, self.BD)


def _states(geom, u, delta, bias, A, B, h0, softplus, rev, adj, z=None):
    """Chunk-local states + cross-chunk combine. Returns (hin (b,NC,N,D), final (b,D,N))."""
    b, L, D, N, NC, T, BD = geom.batch, geom.L, geom.D, geom.N, geom.NC, geom.T, geom.BD
    dev = u.device
    sloc = torch.empty(b, NC, N, D, device=dev, dtype=torch.float32)
    ssum = torch.empty(b, NC, D, device=dev, dtype=torch.float32)
    _chunk_state_kernel[(NC, geom.ND, b)](
        u, delta, bias if bias is not None else delta, A, B, z if z is not None else u,
        sloc, ssum, L, D, NC, geom.DPG, 1,
        u.stride(0), u.stride(1), delta.stride(0), delta.stride(1),
        B.stride(0), B.stride(1), B.stride(2),
        z.stride(0) if z is not None else 0, z.stride(1) if z is not None else 0,
        N=N, T=T, BD=BD, UNROLL=CONFIG["unroll_n"], HAS_BIAS=bias is not None, SOFTPLUS=softplus, REV=rev, ADJ=adj,
        HAS_Z=z is not None,
        num_warps=CONFIG["warps_state"],
    )
    hin = torch.empty(b, NC, N, D, device=dev, dtype=torch.float32)
    hT = torch.empty(b, D, N, device=dev, dtype=torch.float32)
    BL = min(CONFIG["combine_lanes"], triton.next_power_of_2(N * D))
    CB = min(CONFIG["combine_chunks"], triton.next_power_of_2(NC))
    h0c = None if h0 is None else h0.float().contiguous()
    # the adjoint runs opposite to the scan it differentiates
    crev = (not rev) if adj else rev
    _chunk_combine_kernel[(b, triton.cdiv(N * D, BL))](
        sloc, ssum, A, h0c if h0c is not None else sloc, hin, hT,
        D, NC, N=N, CB=CB, BL=BL, HAS_H0=h0c is not None, REV=crev,
        num_warps=CONFIG["warps_combine"],
    )
    return hin, hT


def _segments(geom):
    """(NS, CPS): segments per sequence and chunks per segment. Enough segments that
    batch x d-blocks x segments reaches CONFIG["target_programs"]; one segment (a single
    pass, no segment-state kernel) when batch x d-blocks alone is near it."""
    pairs = geom.batch * geom.ND
    ns = max(1, min(geom.NC, -(-CONFIG["target_programs"] // pairs)))
    if ns <= CONFIG["single_pass_max_ns"]:
        ns = 1
    cps = triton.cdiv(geom.NC, ns)
    return triton.cdiv(geom.NC, cps), cps


def _seg_states(geom, NS, CPS, u, delta, bias, A, B, h0, softplus, rev, adj, z=None):
    """State entering every segment, in the carried quantity's direction: (b, NS, N, D)
    fp32, or None with one segment and no initial state. h0: (b, D, N) or None."""
    b, D, N = geom.batch, geom.D, geom.N
    dev = u.device
    if NS == 1:
        if h0 is None:
            return None
        return h0.float().permute(0, 2, 1).contiguous()
    sloc = torch.empty(b, NS, N, D, device=dev, dtype=torch.float32)
    ssum = torch.empty(b, NS, D, device=dev, dtype=torch.float32)
    _seg_state_kernel[(NS, geom.ND, b)](
        u, delta, bias if bias is not None else delta, A.t().contiguous(), B, z if z is not None else u,
        sloc, ssum, geom.L, D, NS, CPS, geom.DPG, 1, N,
        u.stride(0), u.stride(1), delta.stride(0), delta.stride(1),
        B.stride(0), B.stride(1), B.stride(2),
        z.stride(0) if z is not None else 0, z.stride(1) if z is not None else 0,
        N=N, NP=triton.next_power_of_2(N), UNROLL=CONFIG["unroll_n"], T=geom.T, BD=geom.BD,
        HAS_BIAS=bias is not None, SOFTPLUS=softplus, REV=rev, ADJ=adj,
        HAS_Z=z is not None, DESC=(rev != adj),
        num_warps=CONFIG["warps_state"], **_regcap("maxnreg_state"),
    )
    hseg = torch.empty(b, NS, N, D, device=dev, dtype=torch.float32)
    hT = torch.empty(b, D, N, device=dev, dtype=torch.float32)
    BL = min(CONFIG["combine_lanes"], triton.next_power_of_2(N * D))
    CB = min(CONFIG["combine_chunks"], triton.next_power_of_2(NS))
    h0c = None if h0 is None else h0.float().contiguous()
    crev = (not rev) if adj else rev
    _chunk_combine_kernel[(b, triton.cdiv(N * D, BL))](
        sloc, ssum, A, h0c if h0c is not None else sloc, hseg, hT,
        D, NS, N=N, CB=CB, BL=BL, HAS_H0=h0c is not None, REV=crev,
        num_warps=CONFIG["warps_combine"],
    )
    return hseg


def _fwd(u, delta, A, B, C, D_, z, bias, h0, softplus, rev, store):
    """Forward of one direction. Returns (out, hT (b, D, N), hchunk (b, NC, N, D) or None)."""
    geom = _Geom(u, A, B)
    b, L, D, N = geom.batch, geom.L, geom.D, geom.N
    NS, CPS = _segments(geom)
    hseg = _seg_states(geom, NS, CPS, u, delta, bias, A, B, h0, softplus, rev, adj=False)
    out = torch.empty(b, L, D, device=u.device, dtype=u.dtype)
    hchunk = torch.empty(b, NS * CPS, N, D, device=u.device, dtype=torch.float32) if store else None
    hend = torch.empty(b, NS, N, D, device=u.device, dtype=torch.float32)
    _seg_output_kernel[(NS, geom.ND, b)](
        u, delta, bias if bias is not None else delta, A.t().contiguous(), B, C,
        D_ if D_ is not None else A, z if z is not None else u,
        hseg if hseg is not None else hend, out, hchunk if store else hend, hend,
        L, D, NS * CPS, NS, CPS, geom.DPG, 1, N,
        u.stride(0), u.stride(1), delta.stride(0), delta.stride(1),
        B.stride(0), B.stride(1), B.stride(2), C.stride(0), C.stride(1), C.stride(2),
        z.stride(0) if z is not None else 0, z.stride(1) if z is not None else 0,
        out.stride(0), out.stride(1),
        N=N, NP=triton.next_power_of_2(N), UNROLL=CONFIG["unroll_n"], T=geom.T, BD=geom.BD, HAS_D=D_ is not None,
        HAS_Z=z is not None, HAS_BIAS=bias is not None, SOFTPLUS=softplus, REV=rev,
        HAS_INIT=hseg is not None, STORE=store,
        num_warps=CONFIG["warps_out"], **_regcap("maxnreg_out"),
    )
    hT = hend[:, 0 if rev else NS - 1].transpose(1, 2).contiguous()
    return out, hT, hchunk


def _bwd(geom, gout, ghT, u, delta, A, B, C, D_, z, bias, hchunk, softplus, rev,
         du, ddelta, dz, dB, dC, acc_dz):
    """Backward of one direction from the per-chunk states hchunk (b, NC, N, D). Writes
    du, ddelta (, dz) and accumulates dB, dC. Returns (dA (D,N), dD, dbias, dh0)."""
    b, L, D, N, NC = geom.batch, geom.L, geom.D, geom.N, geom.NC
    dev = u.device
    NS, CPS = _segments(geom)
    # adjoint segment states: the value is gout * silu(z) (gate) times C
    mseg = _seg_states(geom, NS, CPS, gout, delta, bias, A, C, ghT, softplus, rev, adj=True,
                       z=z)
    if hchunk.shape[1] < NS * CPS:  # states from _states (bidirectional): pad, finite
        hchunk = torch.cat([hchunk, hchunk.new_zeros(b, NS * CPS - hchunk.shape[1], N, D)], 1)
    dA_part = torch.empty(b, NS, N, D, device=dev, dtype=torch.float32)
    mend = torch.empty(b, NS, N, D, device=dev, dtype=torch.float32)
    dD_part = torch.empty(b, NS, D, device=dev, dtype=torch.float32) if D_ is not None else dA_part
    dbias_part = torch.empty(b, NS, D, device=dev, dtype=torch.float32) if bias is not None else dA_part
    _seg_bwd_kernel[(NS, geom.ND, b)](
        u, delta, bias if bias is not None else delta, A.t().contiguous(), B, C,
        D_ if D_ is not None else A, z if z is not None else u, gout, hchunk,
        mseg if mseg is not None else mend,
        du, ddelta, dz if dz is not None else du, dB, dC, dA_part, dD_part, dbias_part, mend,
        L, D, NS * CPS, NS, CPS, geom.DPG, 1, N,
        u.stride(0), u.stride(1), delta.stride(0), delta.stride(1),
        B.stride(0), B.stride(1), B.stride(2), C.stride(0), C.stride(1), C.stride(2),
        z.stride(0) if z is not None else 0, z.stride(1) if z is not None else 0,
        gout.stride(0), gout.stride(1),
        dB.stride(0), dB.stride(1), dB.stride(2), dC.stride(0), dC.stride(1), dC.stride(2),
        N=N, NP=triton.next_power_of_2(N), UNROLL=CONFIG["unroll_n"], T=geom.T, BD=geom.BD, HAS_D=D_ is not None,
        HAS_Z=z is not None, HAS_BIAS=bias is not None, SOFTPLUS=softplus, REV=rev,
        ACC_DZ=acc_dz, HAS_INIT=mseg is not None,
        num_warps=CONFIG["warps_bwd"], **_regcap("maxnreg_bwd"),
    )
    dA = dA_part.sum(dim=(0, 1)).t()
    dD = dD_part.sum(dim=(0, 1)) if D_ is not None else None
    dbias = dbias_part.sum(dim=(0, 1)) if bias is not None else None
    dh0 = mend[:, NS - 1 if rev else 0].transpose(1, 2)
    return dA, dD, dbias, dh0


def _prep(u, delta, A, B, C, D_, z, bias):
    u, delta, z = _lastdim_contig(u), _lastdim_contig(delta), _lastdim_contig(z)
    B, C = _lastdim_contig(B), _lastdim_contig(C)
    A = A.float().contiguous()
    D_ = None if D_ is None else D_.float().contiguous()
    bias = None if bias is None else bias.float().contiguous()
    return u, delta, A, B, C, D_, z, bias


class _SelectiveScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D_, z, bias, h0, softplus, rev):
        ctx.set_materialize_grads(False)
        A_dtype = A.dtype
        D_dtype = None if D_ is None else D_.dtype
        b_dtype = None if bias is None else bias.dtype
        u, delta, A, B, C, D_, z, bias = _prep(u, delta, A, B, C, D_, z, bias)
        store = any(ctx.needs_input_grad)
        out, hT, hchunk = _fwd(u, delta, A, B, C, D_, z, bias, h0, softplus, rev, store)
        ctx.save_for_backward(u, delta, A, B, C, D_, z, bias, hchunk)
        ctx.flags = (softplus, rev, A_dtype, D_dtype, b_dtype,
                     None if h0 is None else h0.dtype)
        return out, hT

    @staticmethod
    def backward(ctx, gout, ghT):
        u, delta, A, B, C, D_, z, bias, hin = ctx.saved_tensors
        softplus, rev, A_dtype, D_dtype, b_dtype, h0_dtype = ctx.flags
        geom = _Geom(u, A, B)
        if gout is None:
            gout = torch.zeros_like(u)
        gout = _lastdim_contig(gout)
        du = torch.empty(u.shape, device=u.device, dtype=u.dtype)
        ddelta = torch.empty(delta.shape, device=u.device, dtype=delta.dtype)
        dz = torch.empty(z.shape, device=u.device, dtype=z.dtype) if z is not None else None
        dB = torch.zeros(B.shape, device=u.device, dtype=torch.float32)
        dC = torch.zeros(C.shape, device=u.device, dtype=torch.float32)
        dA, dD, dbias, dh0 = _bwd(geom, gout, ghT, u, delta, A, B, C, D_, z, bias, hin,
                                  softplus, rev, du, ddelta, dz, dB, dC, acc_dz=False)
        return (du, ddelta, dA.to(A_dtype), dB.to(B.dtype), dC.to(C.dtype),
                None if dD is None else dD.to(D_dtype), dz,
                None if dbias is None else dbias.to(b_dtype),
                None if h0_dtype is None else dh0.to(h0_dtype), None, None)


def selective_scan_triton(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                          delta_softplus=False, initial_state=None,
                          return_final_state=False, reverse=False):
    """Triton selective scan; see :func:`mambadna.kernels.selective_scan`."""
    if u.shape[1] == 0:
        from .reference import selective_scan_ref
        return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                  initial_state, return_final_state, reverse)
    y, hT = _SelectiveScanFn.apply(u, delta, A, B, C, D, z, delta_bias, initial_state,
                                   bool(delta_softplus), bool(reverse))
    return (y, hT) if return_final_state else y


class _BidirScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u_f, delta_f, A_f, B_f, C_f, u_r, delta_r, A_r, B_r, C_r,
                D_f, D_r, z, bias_f, bias_r, softplus):
        ctx.set_materialize_grads(False)
        dtypes = tuple(None if t is None else t.dtype
                       for t in (A_f, A_r, D_f, D_r, bias_f, bias_r))
        u_f, delta_f, A_f, B_f, C_f, D_f, z, bias_f = _prep(u_f, delta_f, A_f, B_f, C_f, D_f,
                                                           z, bias_f)
        u_r, delta_r, A_r, B_r, C_r, D_r, _, bias_r = _prep(u_r, delta_r, A_r, B_r, C_r, D_r,
                                                           None, bias_r)
        gf = _Geom(u_f, A_f, B_f)
        gr = _Geom(u_r, A_r, B_r)
        if (gf.batch, gf.L, gf.D, gf.N, gf.BD) != (gr.batch, gr.L, gr.D, gr.N, gr.BD):
            raise ValueError("forward and reverse inputs must have matching shapes")
        hin_f, _ = _states(gf, u_f, delta_f, bias_f, A_f, B_f, None, softplus, False, False)
        hin_r, _ = _states(gr, u_r, delta_r, bias_r, A_r, B_r, None, softplus, True, False)
        b, L, D, N = gf.batch, gf.L, gf.D, gf.N
        out = torch.empty(b, L, D, device=u_f.device, dtype=u_f.dtype)
        _bidir_output_kernel[(gf.NC, gf.ND, b)](
            u_f, delta_f, bias_f if bias_f is not None else delta_f, A_f, B_f, C_f,
            D_f if D_f is not None else A_f, hin_f,
            u_r, delta_r, bias_r if bias_r is not None else delta_r, A_r, B_r, C_r,
            D_r if D_r is not None else A_r, hin_r,
            z if z is not None else u_f, out,
            L, D, gf.NC, gf.DPG, 1,
            u_f.stride(0), u_f.stride(1), delta_f.stride(0), delta_f.stride(1),
            B_f.stride(0), B_f.stride(1), B_f.stride(2), C_f.stride(0), C_f.stride(1),
            C_f.stride(2),
            u_r.stride(0), u_r.stride(1), delta_r.stride(0), delta_r.stride(1),
            B_r.stride(0), B_r.stride(1), B_r.stride(2), C_r.stride(0), C_r.stride(1),
            C_r.stride(2),
            z.stride(0) if z is not None else 0, z.stride(1) if z is not None else 0,
            out.stride(0), out.stride(1),
            N=N, T=gf.T, BD=gf.BD, UNROLL=CONFIG["unroll_n"], HAS_D=D_f is not None, HAS_D2=D_r is not None,
            HAS_Z=z is not None, HAS_BIAS=bias_f is not None, HAS_BIAS2=bias_r is not None,
            SOFTPLUS=softplus, num_warps=CONFIG["warps_out"],
        )
        ctx.save_for_backward(u_f, delta_f, A_f, B_f, C_f, u_r, delta_r, A_r, B_r, C_r,
                              D_f, D_r, z, bias_f, bias_r, hin_f, hin_r)
        ctx.softplus = softplus
        ctx.dtypes = dtypes
        return out

    @staticmethod
    def backward(ctx, gout):
        (u_f, delta_f, A_f, B_f, C_f, u_r, delta_r, A_r, B_r, C_r,
         D_f, D_r, z, bias_f, bias_r, hin_f, hin_r) = ctx.saved_tensors
        sp = ctx.softplus
        if gout is None:
            gout = torch.zeros_like(u_f)
        gout = _lastdim_contig(gout)
        gf = _Geom(u_f, A_f, B_f)
        gr = _Geom(u_r, A_r, B_r)
        dev = u_f.device
        dz = None
        if z is not None:
            dz = torch.empty(z.shape, device=dev, dtype=torch.float32)
        grads = []
        for (geom, u, delta, A, B, C, D_, bias, hin, rev) in (
                (gf, u_f, delta_f, A_f, B_f, C_f, D_f, bias_f, hin_f, False),
                (gr, u_r, delta_r, A_r, B_r, C_r, D_r, bias_r, hin_r, True)):
            du = torch.empty(u.shape, device=dev, dtype=u.dtype)
            ddelta = torch.empty(delta.shape, device=dev, dtype=delta.dtype)
            dB = torch.zeros(B.shape, device=dev, dtype=torch.float32)
            dC = torch.zeros(C.shape, device=dev, dtype=torch.float32)
            dA, dD, dbias, _ = _bwd(geom, gout, None, u, delta, A, B, C, D_, z, bias, hin,
                                    sp, rev, du, ddelta, dz, dB, dC, acc_dz=rev)
            grads.append((du, ddelta, dA, dB.to(B.dtype), dC.to(C.dtype), dD, dbias))
        (duf, ddf, dAf, dBf, dCf, dDf, dbf), (dur, ddr, dAr, dBr, dCr, dDr, dbr) = grads
        tA_f, tA_r, tD_f, tD_r, tb_f, tb_r = ctx.dtypes
        cast = lambda t, dt: None if t is None else t.to(dt)  # noqa: E731
        return (duf, ddf, dAf.to(tA_f), dBf, dCf, dur, ddr, dAr.to(tA_r), dBr, dCr,
                cast(dDf, tD_f), cast(dDr, tD_r),
                None if dz is None else dz.to(z.dtype), cast(dbf, tb_f), cast(dbr, tb_r), None)


def bidirectional_selective_scan_triton(u_f, delta_f, A_f, B_f, C_f, u_r, delta_r, A_r, B_r,
                                        C_r, D_f=None, D_r=None, z=None, delta_bias_f=None,
                                        delta_bias_r=None, delta_softplus=False):
    """Fused BiMamba scan; see :func:`mambadna.kernels.bidirectional_selective_scan`."""
    if u_f.shape[1] == 0:
        from .reference import bidirectional_selective_scan_ref
        return bidirectional_selective_scan_ref(u_f, delta_f, A_f, B_f, C_f, u_r, delta_r, A_r,
                                                B_r, C_r, D_f, D_r, z, delta_bias_f,
                                                delta_bias_r, delta_softplus)
    return _BidirScanFn.apply(u_f, delta_f, A_f, B_f, C_f, u_r, delta_r, A_r, B_r, C_r,
                              D_f, D_r, z, delta_bias_f, delta_bias_r, bool(delta_softplus))


def selective_state_update_triton(state, u, delta, A, B, C, D=None, z=None, delta_bias=None,
                                  delta_softplus=False):
    """One recurrent step; see :func:`mambadna.kernels.selective_state_update`.

    Differentiable: when any input needs a gradient it runs as a length-1 scan.
    """
    tensors = [t for t in (state, u, delta, A, B, C, D, z, delta_bias) if t is not None]
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        y, h = selective_scan_triton(
            u.unsqueeze(1), delta.unsqueeze(1), A, B.unsqueeze(1), C.unsqueeze(1), D,
            None if z is None else z.unsqueeze(1), delta_bias, delta_softplus, state, True)
        return y[:, 0], h
    batch, D_inner = u.shape
    N = A.shape[1]
    G = B.shape[1]
    u, delta = _lastdim_contig(u), _lastdim_contig(delta)
    z = _lastdim_contig(z)
    B, C = _lastdim_contig(B), _lastdim_contig(C)
    state = _lastdim_contig(state)
    A = A.float().contiguous()
    Dv = None if D is None else D.float().contiguous()
    bias = None if delta_bias is None else delta_bias.float().contiguous()
    out = torch.empty(batch, D_inner, device=u.device, dtype=u.dtype)
    new_state = torch.empty(batch, D_inner, N, device=u.device, dtype=torch.float32)
    BN = triton.next_power_of_2(N)
    BD = max(1, min(64, triton.next_power_of_2(D_inner), 4096 // BN))
    _state_update_kernel[(batch, triton.cdiv(D_inner, BD))](
        state, u, delta, bias if bias is not None else delta, A, B, C,
        Dv if Dv is not None else A, z if z is not None else u, out, new_state,
        D_inner, D_inner // G,
        state.stride(0), state.stride(1), u.stride(0), delta.stride(0),
        B.stride(0), B.stride(1), C.stride(0), C.stride(1),
        z.stride(0) if z is not None else 0,
        N=N, BD=BD, BN=BN, HAS_D=Dv is not None, HAS_Z=z is not None,
        HAS_BIAS=bias is not None, SOFTPLUS=bool(delta_softplus),
    )
    return out, new_state
