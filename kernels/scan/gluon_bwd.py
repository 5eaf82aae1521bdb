"""The scan's backward kernel in Gluon (Triton's explicit-layout language): the GPU
default where it applies (``scan.triton._bwd_kernel``; timings against the Triton kernel
in benchmarks/README.md).

Same algorithm, arguments and outputs as ``scan.triton._rows_bwd_kernel``, which the
interpreter runs (CPU tests) and which is the fallback (``DZ``: dz from the recomputed
output, from the saved pre-gate output ``y_ptr``, or not at all); only the data layout
differs. In the Triton kernel the compiler
spreads a thread over 4 states x 4 channels, so each step pays ~9 layout conversions
through shared memory (per-channel vectors into the tile and back) and 48 shuffles
(sums over states and over channels). Here the layout is chosen:

- tile (d_state, channels) with one channel per lane and all states in its registers
  (``P``): per-channel rows load, compute and store in that lane with no conversion,
  and the sums over states (dt, u and y terms) are in-thread adds;
- the two sums over channels (dB, dC) go through one transpose each into ``Q``
  (a lane per state and half the channels), then in-thread adds and one shuffle:
  ~2 conversions and 2 shuffles a step instead of ~9 and 48.

The sub-block's first step takes its decay, dt and u from the forward step that
produced the sub-block's second state, instead of reloading and exponentiating again
(reusing the B row as well spilled and measured slower). ``PF`` > 0: rows (and
checkpoints) are prefetched to L2 that many positions ahead, rounded up to blocks of F.
``FINE`` > 0: global checkpoints every FINE positions, refined per sub-segment to every F in
shared memory. ``SAME_L``/``SAME_BC``: strides known equal, one row offset a step for all.
B/C rows load unmasked past the segment end, where the row index is clamped and dt is 0
(measured faster than masking them). ``S0``/``NSH``: this
launch's first segment and how many segments its checkpoint buffer holds.

Gluon has no interpreter, so this kernel runs only on a GPU; ``tests/test_scan.py``
compares it with the reference there (marked ``gpu``). Requires Triton with Gluon
(3.5+); ``available()`` says whether it can be used.
"""
from __future__ import annotations

try:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    _OK = True
except Exception:  # pragma: no cover - older Triton
    _OK = False


def available() -> bool:
    return _OK


if _OK:
    @gluon.jit
    def _g_ptx1(x, OP: gl.constexpr):
        """One-operand fp32 PTX instruction OP (e.g. "ex2.approx.ftz.f32"), elementwise."""
        return gl.inline_asm_elementwise(OP + " $0, $1;", "=r,r", [x], dtype=gl.float32, is_pure=True, pack=1)

    @gluon.jit
    def _g_ex2(x):
        return _g_ptx1(x, "ex2.approx.ftz.f32")

    @gluon.jit
    def _g_lg2(x):
        return _g_ptx1(x, "lg2.approx.ftz.f32")

    @gluon.jit
    def _g_rcp(x):
        return _g_ptx1(x, "rcp.approx.ftz.f32")

    @gluon.jit
    def _g_prefetch(ptr):
        """Hint, no effect on results: start fetching the lines at ptr (valid addresses) into L2."""
        gl.inline_asm_elementwise("prefetch.global.L2 [$1];\n\tmov.u32 $0, 0;", "=r,l",
                                  [ptr.to(gl.int64, bitcast=True)], dtype=gl.int32, is_pure=False, pack=1)

    @gluon.jit
    def _g_prefetch_block(kp, t0, nsteps, u_pf, d_pf, z_pf, g_pf, y_pf, B_pf, C_pf, ck_pf,
                          s_ul, s_dl, s_zl, s_gl, s_yl, s_Bl, s_Cl, ck_step,
                          F: gl.constexpr, HAS_Z: gl.constexpr, HAS_Y: gl.constexpr, REV: gl.constexpr,
                          CKDIV: gl.constexpr = 1):
        """Prefetch the rows of block kp and its checkpoint (number kp // CKDIV; bases clamped
        to valid addresses)."""
        for q in gl.static_range(F):
            t, _ = _g_t(t0, nsteps, kp * F + q, REV)
            _g_prefetch(u_pf + t * s_ul)
            _g_prefetch(d_pf + t * s_dl)
            _g_prefetch(g_pf + t * s_gl)
            if HAS_Z:
                _g_prefetch(z_pf + t * s_zl)
            if HAS_Y:
                _g_prefetch(y_pf + t * s_yl)
            _g_prefetch(B_pf + t * s_Bl)
            _g_prefetch(C_pf + t * s_Cl)
        _g_prefetch(ck_pf + (kp // CKDIV) * ck_step)

    @gluon.jit
    def _g_sigmoid(x):
        return _g_rcp(1.0 + _g_ex2(x * -1.4426950408889634))

    @gluon.jit
    def _g_dt(delta_row, t, s_dl, m, bias, HAS_BIAS: gl.constexpr, SOFTPLUS: gl.constexpr):
        """(dt, delta + bias) of row t; dt is 0 where m is false."""
        v = gl.load(delta_row + t * s_dl, mask=m, other=0.0).to(gl.float32)
        if HAS_BIAS:
            v = v + bias
        if SOFTPLUS:
            dt = gl.where(v > 20.0, v, _g_lg2(1.0 + _g_ex2(v * 1.4426950408889634)) * 0.6931471805599453)
        else:
            dt = v
        return gl.where(m, dt, 0.0), v

    @gluon.jit
    def _g_t(t0, nsteps, i, REV: gl.constexpr):
        valid = i < nsteps
        if REV:
            t = t0 + nsteps - 1 - i
        else:
            t = t0 + i
        t = gl.where(valid, t, t0)
        return t.to(gl.int64), valid

    @gluon.jit
    def _g_fstep(e, a2, i, t0, nsteps, mask_d, mask_n, bias, u_row, d_row, B_ptr, B_off, n_ar, s_ul, s_dl, s_Bl,
                 HAS_BIAS: gl.constexpr, SOFTPLUS: gl.constexpr, REV: gl.constexpr):
        t, valid = _g_t(t0, nsteps, i, REV)
        m = mask_d & valid
        dt, vpre = _g_dt(d_row, t, s_dl, m, bias, HAS_BIAS, SOFTPLUS)
        uu = gl.load(u_row + t * s_ul, mask=m, other=0.0).to(gl.float32)
        bt = gl.load(B_ptr + (B_off + t * s_Bl) + n_ar, mask=mask_n, other=0.0).to(gl.float32)
        a = _g_ex2(a2 * dt[None, :])
        # the step's decay and rows too, for the caller to reuse
        return a * e + (dt * uu)[None, :] * bt[:, None], a, dt, vpre, uu

    @gluon.jit
    def _g_rstep(e, mu, dA_acc, dDacc, dbacc, a2, i, t0, nsteps, mask_d, mask_n, mask_nq, bias, dd,
                 u_row, d_row, B_ptr, B_off, C_ptr, C_off, n_ar, z_row, g_row, y_row, du_row, dd_row, dz_row, dB_row,
                 dC_row, s_ul, s_dl, s_Bl, s_Cl, s_zl, s_gl, s_yl, s_dBl, s_dCl, s_ol, Q: gl.constexpr,
                 HAS_D: gl.constexpr, HAS_Z: gl.constexpr, HAS_BIAS: gl.constexpr,
                 SOFTPLUS: gl.constexpr, REV: gl.constexpr, DZ: gl.constexpr,
                 a_in=None, dt_in=None, v_in=None, u_in=None, HAVE: gl.constexpr = False):
        t, valid = _g_t(t0, nsteps, i, REV)
        m = mask_d & valid
        if HAVE:  # the forward step just computed this step's decay, dt and u
            dt = dt_in
            vpre = v_in
            uu = u_in
        else:
            dt, vpre = _g_dt(d_row, t, s_dl, m, bias, HAS_BIAS, SOFTPLUS)
            uu = gl.load(u_row + t * s_ul, mask=m, other=0.0).to(gl.float32)
        # past the end t is clamped to t0 and dt is 0, so B and C load unmasked there and add nothing
        bt = gl.load(B_ptr + (B_off + t * s_Bl) + n_ar, mask=mask_n, other=0.0).to(gl.float32)
        ct = gl.load(C_ptr + (C_off + t * s_Cl) + n_ar, mask=mask_n, other=0.0).to(gl.float32)
        g = gl.load(g_row + t * s_gl, mask=m, other=0.0).to(gl.float32)
        if HAS_Z:
            zz = gl.load(z_row + t * s_zl, mask=m, other=0.0).to(gl.float32)
            sz = _g_sigmoid(zz)
            gy = g * zz * sz
        else:
            gy = g
        if HAVE:
            a = a_in
        else:
            a = _g_ex2(a2 * dt[None, :])
        dtu = dt * uu
        ae = a * e  # shared by h and the dA term
        h = ae + dtu[None, :] * bt[:, None]
        lam = ct[:, None] * gy[None, :] + mu
        # sums over channels: transpose into Q (a lane per state), add in-thread
        mq = mask_nq & valid
        rC = gl.sum(gl.convert_layout(h * gy[None, :], Q), axis=1)
        gl.atomic_add(dC_row + t * s_dCl, rC, mask=mq, sem="relaxed")
        rB = gl.sum(gl.convert_layout(lam * dtu[None, :], Q), axis=1)
        gl.atomic_add(dB_row + t * s_dBl, rB, mask=mq, sem="relaxed")
        # sums over states: in-thread
        s1 = gl.sum(lam * bt[:, None], axis=0)
        w = lam * ae
        dA_acc += w * dt[None, :]
        s2 = gl.sum(w * a2, axis=0) * 0.6931471805599453
        du = dt * s1
        if HAS_D:
            du += dd * gy
            dDacc += gy * uu
        ddt = uu * s1 + s2
        if SOFTPLUS:
            ddt = ddt * _g_sigmoid(vpre)
        ddt = gl.where(m, ddt, 0.0)
        dbacc += ddt
        if HAS_Z and DZ != 2:
            if DZ == 0:
                y = gl.sum(ct[:, None] * h, axis=0)
                if HAS_D:
                    y += dd * uu
            else:  # the saved pre-gate output
                y = gl.load(y_row + t * s_yl, mask=m, other=0.0).to(gl.float32)
            dz = g * y * sz * (1.0 + zz * (1.0 - sz))
            gl.store(dz_row + t * s_ol, dz.to(dz_row.dtype.element_ty), mask=m)
        gl.store(du_row + t * s_ol, du.to(du_row.dtype.element_ty), mask=m)
        gl.store(dd_row + t * s_ol, ddt.to(dd_row.dtype.element_ty), mask=m)
        return a * lam, dA_acc, dDacc, dbacc

    @gluon.jit
    def _gluon_bwd_kernel(
        u_ptr, delta_ptr, bias_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, g_ptr, y_ptr,
        hfine_ptr, mseg_ptr,
        du_ptr, ddelta_ptr, dz_ptr, dB_ptr, dC_ptr, dA_ptr, dD_ptr, dbias_ptr, mend_ptr,
        L, D, NS, SEG, DPG, SD, S0, NSH,
        s_ub, s_ul, s_db, s_dl, s_Bb, s_Bl, s_Bg, s_Cb, s_Cl, s_Cg, s_zb, s_zl, s_gb, s_gl, s_yb, s_yl,
        s_dBb, s_dBl, s_dBg, s_dCb, s_dCl, s_dCg, s_ob, s_ol,
        N: gl.constexpr, NP: gl.constexpr, BD: gl.constexpr, F: gl.constexpr, SUB: gl.constexpr,
        HAS_D: gl.constexpr, HAS_Z: gl.constexpr, HAS_BIAS: gl.constexpr,
        SOFTPLUS: gl.constexpr, REV: gl.constexpr, DZ: gl.constexpr, HAS_MINIT: gl.constexpr,
        PF: gl.constexpr = 0, FINE: gl.constexpr = 0, SAME_L: gl.constexpr = False, SAME_BC: gl.constexpr = False,
    ):
        """As ``scan.triton._rows_bwd_kernel`` (one warp; BD = 32 channels, a lane per
        channel holding all NP <= 32 states; SUB 2). FINE > 0: hfine holds a state every FINE
        positions only; the kernel walks each FINE-position sub-segment forwards from it,
        keeping a state every F positions in shared memory, then runs its blocks from there.
        SAME_L: the (batch, length, d_inner) tensors share one position stride (SAME_BC: B, C,
        dB, dC share one), so each position's offset is computed once for all of them."""
        if SAME_L:
            s_dl = s_ul
            s_zl = s_ul
            s_gl = s_ul
            s_yl = s_ul
            s_ol = s_ul
        if SAME_BC:
            s_Cl = s_Bl
            s_dBl = s_Bl
            s_dCl = s_Bl
        P: gl.constexpr = gl.BlockedLayout([NP, 1], [1, 32], [1, 1], [0, 1])
        Q: gl.constexpr = gl.BlockedLayout([1, BD * NP // 32], [NP, 32 // NP], [1, 1], [1, 0])
        LD: gl.constexpr = gl.SliceLayout(0, P)
        LN: gl.constexpr = gl.SliceLayout(1, P)
        pid_d = gl.program_id(0)
        pid_s = gl.program_id(1) + S0
        pid_b = gl.program_id(2).to(gl.int64)
        d_idx = pid_d * BD + gl.arange(0, BD, layout=LD)
        mask_d = d_idx < D
        n_ar = gl.arange(0, NP, layout=LN)
        mask_n = n_ar < N
        n_q = gl.arange(0, NP, layout=gl.SliceLayout(1, Q))
        mask_nq = n_q < N
        mask_nd = mask_n[:, None] & mask_d[None, :]
        nd_off = n_ar[:, None] * D + d_idx[None, :]
        grp = (pid_d * BD) // DPG
        dcol = d_idx * SD
        a2 = gl.load(A_ptr + n_ar[:, None] * D + dcol[None, :], mask=mask_nd, other=0.0) * 1.4426950408889634
        if HAS_BIAS:
            bias = gl.load(bias_ptr + d_idx, mask=mask_d, other=0.0).to(gl.float32)
        else:
            bias = gl.zeros([BD], gl.float32, layout=LD)
        if HAS_D:
            dd = gl.load(D_ptr + d_idx, mask=mask_d, other=0.0).to(gl.float32)
        else:
            dd = gl.zeros([BD], gl.float32, layout=LD)
        seg = pid_b * NS + pid_s
        if HAS_MINIT:
            mu = gl.load(mseg_ptr + seg * N * D + nd_off, mask=mask_nd, other=0.0)
        else:
            mu = gl.zeros([NP, BD], gl.float32, layout=P)
        dA_acc = gl.zeros([NP, BD], gl.float32, layout=P)
        dDacc = gl.zeros([BD], gl.float32, layout=LD)
        dbacc = gl.zeros([BD], gl.float32, layout=LD)
        t0 = pid_s * SEG
        nsteps = gl.minimum(SEG, L - t0)
        nblk = gl.cdiv(nsteps, F)
        CKF: gl.constexpr = FINE if FINE > 0 else F  # positions between checkpoints in hfine
        KB: gl.constexpr = FINE // F  # blocks per sub-segment (FINE)
        fbase = (pid_b * NSH + pid_s - S0) * (SEG // CKF)
        if FINE > 0:
            ck_s = gl.allocate_shared_memory(gl.float32, [KB, NP, BD],
                                             gl.SwizzledSharedLayout(1, 1, 1, [1, 0]))
        u_row = u_ptr + pid_b * s_ub + dcol
        d_row = delta_ptr + pid_b * s_db + dcol
        # B, C: scalar row offsets; the per-state offsets stay compile-time constants
        B_off = pid_b * s_Bb + grp * s_Bg
        C_off = pid_b * s_Cb + grp * s_Cg
        z_row = z_ptr + pid_b * s_zb + dcol
        g_row = g_ptr + pid_b * s_gb + dcol
        y_row = y_ptr + pid_b * s_yb + dcol
        du_row = du_ptr + pid_b * s_ob + dcol
        dd_row = ddelta_ptr + pid_b * s_ob + dcol
        dz_row = dz_ptr + pid_b * s_ob + dcol
        dB_row = dB_ptr + pid_b * s_dBb + grp * s_dBg + n_q
        dC_row = dC_ptr + pid_b * s_dCb + grp * s_dCg + n_q
        PFB: gl.constexpr = (PF + F - 1) // F  # prefetch distance in blocks
        if PFB > 0:  # prefetch bases: every address valid
            dcl = gl.minimum(d_idx, D - 1) * SD
            ncl = gl.minimum(gl.arange(0, BD, layout=LD), N - 1)
            u_pf = u_ptr + pid_b * s_ub + dcl
            d_pf = delta_ptr + pid_b * s_db + dcl
            z_pf = z_ptr + pid_b * s_zb + dcl
            g_pf = g_ptr + pid_b * s_gb + dcl
            y_pf = y_ptr + pid_b * s_yb + dcl
            B_pf = B_ptr + B_off + ncl
            C_pf = C_ptr + C_off + ncl
            # one lane per checkpoint row (a 128-byte line each)
            ck_pf = hfine_ptr + fbase * N * D + ncl * D + pid_d * BD
            for kk in range(PFB):
                _g_prefetch_block(gl.maximum(nblk - 1 - kk, 0), t0, nsteps, u_pf, d_pf, z_pf, g_pf, y_pf, B_pf, C_pf,
                                  ck_pf, s_ul, s_dl, s_zl, s_gl, s_yl, s_Bl, s_Cl, N * D, F, HAS_Z,
                                  HAS_Z and DZ == 1, REV, CKF // F)
        for kk in range(nblk):
            k = nblk - 1 - kk
            if PFB > 0:
                _g_prefetch_block(gl.maximum(k - PFB, 0), t0, nsteps, u_pf, d_pf, z_pf, g_pf, y_pf, B_pf, C_pf,
                                  ck_pf, s_ul, s_dl, s_zl, s_gl, s_yl, s_Bl, s_Cl, N * D, F, HAS_Z,
                                  HAS_Z and DZ == 1, REV, CKF // F)
            if FINE > 0:
                if (k % KB == KB - 1) | (kk == 0):  # entering a sub-segment: walk it, keep its states
                    c = k // KB
                    e = gl.load(hfine_ptr + (fbase + c) * N * D + nd_off, mask=mask_nd, other=0.0)
                    for q in range(KB - 1):
                        ck_s.index(q).store(e)
                        for r in gl.static_range(F):
                            e, _, _, _, _ = _g_fstep(e, a2, c * FINE + q * F + r, t0, nsteps, mask_d, mask_n,
                                                     bias, u_row, d_row, B_ptr, B_off, n_ar, s_ul, s_dl, s_Bl,
                                                     HAS_BIAS, SOFTPLUS, REV)
                    ck_s.index(KB - 1).store(e)
            for j in gl.static_range(F // SUB - 1, -1, -1):
                i0 = k * F + j * SUB
                if FINE > 0:
                    e0 = ck_s.index(k % KB).load(P)
                else:
                    e0 = gl.load(hfine_ptr + (fbase + k) * N * D + nd_off, mask=mask_nd, other=0.0)
                for q in gl.static_range(j * SUB):  # walk to the sub-block's start
                    e0, _, _, _, _ = _g_fstep(e0, a2, k * F + q, t0, nsteps, mask_d, mask_n, bias, u_row, d_row,
                                              B_ptr, B_off, n_ar, s_ul, s_dl, s_Bl, HAS_BIAS, SOFTPLUS, REV)
                e1, a0, dt0, v0, u0 = _g_fstep(e0, a2, i0, t0, nsteps, mask_d, mask_n, bias, u_row, d_row,
                                               B_ptr, B_off, n_ar, s_ul, s_dl, s_Bl, HAS_BIAS, SOFTPLUS, REV)
                mu, dA_acc, dDacc, dbacc = _g_rstep(
                    e1, mu, dA_acc, dDacc, dbacc, a2, i0 + 1, t0, nsteps, mask_d, mask_n, mask_nq, bias, dd,
                    u_row, d_row, B_ptr, B_off, C_ptr, C_off, n_ar, z_row, g_row, y_row, du_row, dd_row, dz_row, dB_row,
                    dC_row, s_ul, s_dl, s_Bl, s_Cl, s_zl, s_gl, s_yl, s_dBl, s_dCl, s_ol, Q,
                    HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS, REV, DZ)
                mu, dA_acc, dDacc, dbacc = _g_rstep(
                    e0, mu, dA_acc, dDacc, dbacc, a2, i0, t0, nsteps, mask_d, mask_n, mask_nq, bias, dd,
                    u_row, d_row, B_ptr, B_off, C_ptr, C_off, n_ar, z_row, g_row, y_row, du_row, dd_row, dz_row, dB_row,
                    dC_row, s_ul, s_dl, s_Bl, s_Cl, s_zl, s_gl, s_yl, s_dBl, s_dCl, s_ol, Q,
                    HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS, REV, DZ, a0, dt0, v0, u0, True)
        gl.store(dA_ptr + seg * N * D + nd_off, dA_acc, mask=mask_nd)
        if HAS_D:
            gl.store(dD_ptr + seg * D + d_idx, dDacc, mask=mask_d)
        if HAS_BIAS:
            gl.store(dbias_ptr + seg * D + d_idx, dbacc, mask=mask_d)
        if REV:
            first = NS - 1
        else:
            first = 0
        if pid_s == first:
            gl.store(mend_ptr + pid_b * N * D + nd_off, mu, mask=mask_nd)
