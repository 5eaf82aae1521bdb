"""Fast CPU selective scan for inference (numba).

The sequential recurrence of :func:`selective_scan_ref`, compiled by numba: each task
owns a block of up to ``W`` channels of one batch row (and one group) and walks the
length once, keeping the (d_state, W) fp32 state in a small cache-resident array. The
innermost loop runs over the channels of the block (contiguous in the channel-last
inputs), so LLVM vectorises it (SSE/AVX2/AVX-512, whatever the host has): per position
and state it computes ``h = exp(dt * A) * h + dt * u * B`` and ``y += h * C`` for a
vector of channels at once, without ever materialising (batch, length, d_inner,
d_state) tensors. The bidirectional scan runs both directions in one task, the gate
applied once to their sum.

``exp`` (and softplus, silu) are evaluated by the polynomials below rather than by
libm so that the loops vectorise without SVML: the state decay as ``2^(dt log2(e) A)``
(cephes' exp2f polynomial), silu's and softplus' exp by cephes' expf (Cody-Waite
reduction), both within 1 ulp of fp32 exp over their whole range; softplus' log1p by
the atanh series (within 3 ulp). No reassociating fast-math, so the range reductions
stay exact. Results equal the fp64 reference within ~1e-7 relative (the tests check
1e-4), a model's logits the fp32 reference path's within ~1e-6.

The depthwise conv + SiLU and the RMSNorm of the block have CPU kernels here too
(channel-last, one pass, no transposed or concatenated copies): on CPU they cost
more than the scan once the scan is compiled.

Threads: each kernel has a C-callable body that a team of threads runs at once, taking
tasks from an atomic counter. The team is torch's own OpenMP team
(``GOMP_parallel`` of the runtime torch links, so ``torch.get_num_threads()`` threads,
the very ones that run torch's ops); where that runtime cannot be found (not Linux, a
non-OpenMP torch) or in a forked child, the calling thread plus a small Python pool,
the GIL released. Not numba's ``parallel=True``: its threading layer would be a second
pool beside torch's, and torch's OpenMP threads spin-wait after each op, so two pools
on the same cores slow each other down (measured: a third more CPU time per forward
on 2 cores); numba's GNU OpenMP layer is also not fork-safe, its workqueue layer not
thread-safe.

Inference only: no autograd. :mod:`mambadna.kernels` dispatches here for CPU tensors
when no gradient is needed and numba imports; everything else keeps the reference.
Compiled code is cached on disk (``cache=True``: ``__pycache__`` beside this file, or
numba's user cache dir when that is read-only), so the first-call JIT cost (a few
seconds) is paid once per installation.
"""
from __future__ import annotations

import ctypes
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import numpy as np
import torch

Tensor = torch.Tensor

try:  # numba is optional at import time: without it the reference path is used
    import numba
    from llvmlite import ir as _ir
    from numba import carray, cfunc, njit, types
    from numba.extending import intrinsic

    _NUMBA_ERROR: Optional[BaseException] = None
except Exception as e:  # pragma: no cover - depends on the environment
    numba = None
    _NUMBA_ERROR = e

# calls of the fast path (the tests read it to check the dispatch)
CALLS = {"scan": 0, "bidirectional": 0, "conv": 0, "norm": 0}

# channels per task: the longer the vectorised channel loop the better (fewer loop
# set-ups per position and state); fewer when that leaves threads idle (see _scan)
_W_MAX = 512


def available() -> bool:
    """True when numba imports (the fast CPU scan can run)."""
    return numba is not None


if numba is not None:
    _f32 = np.float32
    _i32 = np.int32
    _ZERO, _ONE, _HALF = _f32(0.0), _f32(1.0), _f32(0.5)
    _EXP_LO, _EXP_HI = _f32(-87.0), _f32(88.0)  # 2^k stays a normal float
    _LOG2E = _f32(1.44269504088896341)
    _C1, _C2 = _f32(0.693359375), _f32(-2.12194440e-4)  # ln 2 = C1 + C2 (C1 exact in 9 bits)
    _P0, _P1, _P2 = _f32(1.9875691500e-4), _f32(1.3981999507e-3), _f32(8.3334519073e-3)
    _P3, _P4, _P5 = _f32(4.1665795894e-2), _f32(1.6666665459e-1), _f32(5.0000001201e-1)
    _I127, _I23 = _i32(127), _i32(23)
    # cephes exp2f: 2^r = 1 + r P(r) on [-1/2, 1/2]
    _E0, _E1, _E2 = _f32(1.535336188319500e-4), _f32(1.339887440266574e-3), _f32(9.618437357674640e-3)
    _E3, _E4, _E5 = _f32(5.550332471162809e-2), _f32(2.402264791363012e-1), _f32(6.931472028550421e-1)
    _EXP2_LO, _EXP2_HI = _f32(-126.0), _f32(127.0)
    _TWO = _f32(2.0)
    # 1 / (2k + 1), k = 1..9: log1p(e) = 2 atanh(s), s = e / (2 + e) <= 1/3
    _Q1, _Q2, _Q3 = _f32(1 / 3), _f32(1 / 5), _f32(1 / 7)
    _Q4, _Q5, _Q6 = _f32(1 / 9), _f32(1 / 11), _f32(1 / 13)
    _Q7, _Q8, _Q9 = _f32(1 / 15), _f32(1 / 17), _f32(1 / 19)

    # reassociation would undo the Cody-Waite split: allow only contraction (FMA) and
    # the harmless flags
    _FM = {"contract", "nsz", "arcp", "afn"}
    _JIT = dict(nogil=True, error_model="numpy", fastmath=_FM, boundscheck=False)

    def _jit(**kw):
        """njit with the on-disk cache, or without it where no cache dir is writable."""
        def deco(fn):
            try:
                return njit(cache=True, **kw)(fn)
            except RuntimeError:  # pragma: no cover - "no locator available"
                return njit(**kw)(fn)
        return deco

    @intrinsic
    def _bits_as_f32(typingctx, x):
        """Reinterpret an int32 as float32 (a bitcast; vectorises)."""
        sig = types.float32(types.int32)

        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], _ir.FloatType())

        return sig, codegen

    @_jit(**_JIT)
    def _exp(x):
        """fp32 exp, vectorisable; inputs clamped to [-87, 88] (exp(-87) ~ 1.6e-38)."""
        x = min(max(x, _EXP_LO), _EXP_HI)
        fx = np.floor(x * _LOG2E + _HALF)
        r = x - fx * _C1
        r = r - fx * _C2
        r2 = r * r
        p = ((((_P0 * r + _P1) * r + _P2) * r + _P3) * r + _P4) * r + _P5
        p = p * r2 + r + _ONE
        k = _i32(fx)
        return p * _bits_as_f32((k + _I127) << _I23)

    @intrinsic
    def _f32_bits(typingctx, x):
        """Reinterpret a float32 as int32 (a bitcast; vectorises)."""
        sig = types.int32(types.float32)

        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], _ir.IntType(32))

        return sig, codegen

    _MAGIC = _f32(12582912.0)  # 1.5 * 2^23: x + MAGIC rounds x to an integer in the low bits

    @_jit(**_JIT)
    def _exp2(x):
        """fp32 2^x within 1 ulp, vectorisable; inputs clamped to [-126, 127]. The
        rounding of x to an integer k is the 1.5 * 2^23 trick, which also leaves k in
        the low bits of the sum: cheaper than round + convert."""
        x = min(max(x, _EXP2_LO), _EXP2_HI)
        t = x + _MAGIC
        r = x - (t - _MAGIC)  # in [-1/2, 1/2]
        p = ((((_E0 * r + _E1) * r + _E2) * r + _E3) * r + _E4) * r + _E5
        p = p * r + _ONE
        # t's low bits hold k = round(x): 2^k has the bits (k + 127) << 23,
        # i.e. (bits(t) << 23) + (127 << 23) (bits(1.5 * 2^23) << 23 wraps to 0)
        return p * _bits_as_f32((_f32_bits(t) << _I23) + (_I127 << _I23))

    @_jit(**_JIT)
    def _softplus(x):
        """log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)), the log1p by the atanh series."""
        e = _exp(-abs(x))
        s = e / (_TWO + e)
        s2 = s * s
        q = ((((((((_Q9 * s2 + _Q8) * s2 + _Q7) * s2 + _Q6) * s2 + _Q5) * s2 + _Q4) * s2
               + _Q3) * s2 + _Q2) * s2 + _Q1)
        return max(x, _ZERO) + _TWO * (s + s * s2 * q)

    @_jit(**_JIT)
    def _work_arrays(N, W):
        """A task's state (N, W) and its per-channel rows: dt, dt u, output accumulator."""
        return (np.empty((N, W), dtype=np.float32), np.empty(W, dtype=np.float32),
                np.empty(W, dtype=np.float32), np.empty(W, dtype=np.float32))

    @_jit(**_JIT)
    def _task_of(task, G, nblk, dg, W):
        """Task -> (batch row, group, channel block, first channel, channels): tasks run
        over (batch row, group, block of up to W of the group's dg channels)."""
        bi = task // (G * nblk)
        rem = task - bi * (G * nblk)
        g = rem // nblk
        blk = rem - g * nblk
        d0 = g * dg + blk * W
        return bi, g, blk, d0, min(W, (g + 1) * dg - d0)

    @_jit(**_JIT)
    def _dt_row(dr, bia, softplus, ur, cw, dtv, dtuv):
        """One position's dt = softplus(delta + bias) (or delta + bias) into dtv and
        dt u into dtuv, for the cw channels of the row slices dr (delta), bia, ur (u)."""
        for c in range(cw):
            v = dr[c] + bia[c]
            if softplus:
                v = _softplus(v)
            dtv[c] = v
            dtuv[c] = v * ur[c]

    @_jit(**_JIT)
    def _advance(h, At, Bm, Cm, bi, t, g, d0, cw, dtv, dtuv, acc):
        """The state h (N, W) of channels d0 .. d0+cw one position on, at t:
        h = 2^(dt At) h + dt u B (dtv: dt, dtuv: dt u); acc += sum_n h C."""
        e = d0 + cw
        for n in range(At.shape[0]):
            bn = Bm[bi, t, g, n]
            cn = Cm[bi, t, g, n]
            Ar = At[n, d0:e]
            hr = h[n]
            for c in range(cw):
                hv = _exp2(dtv[c] * Ar[c]) * hr[c] + dtuv[c] * bn
                hr[c] = hv
                acc[c] += hv * cn

    @_jit(**_JIT)
    def _scan_pass(u, delta, bias, softplus, At, Bm, Cm, Dv, z, has_z, y, accumulate,
                   h, bi, g, d0, cw, reverse, dtv, dtuv, acc):
        """One direction over the whole length for channels d0 .. d0+cw of batch row bi.

        h (N, W) holds the state (in: initial, out: final). Writes
        y = (sum_n h C + D u [+ y if accumulate]) [* silu(z) if has_z].
        """
        L = u.shape[1]
        e = d0 + cw
        # row slices indexed from 0: LLVM then sees non-negative indices (no wraparound
        # selects, no gathers) and vectorises the channel loops with plain loads
        bia = bias[d0:e]
        Dr = Dv[d0:e]
        for s in range(L):
            t = L - 1 - s if reverse else s
            ur = u[bi, t, d0:e]
            dr = delta[bi, t, d0:e]
            yr = y[bi, t, d0:e]
            _dt_row(dr, bia, softplus, ur, cw, dtv, dtuv)
            for c in range(cw):
                acc[c] = Dr[c] * ur[c]
            _advance(h, At, Bm, Cm, bi, t, g, d0, cw, dtv, dtuv, acc)
            if accumulate:
                for c in range(cw):
                    acc[c] += yr[c]
            if has_z:
                zr = z[bi, t, d0:e]
                for c in range(cw):
                    zv = zr[c]
                    acc[c] *= zv / (_ONE + _exp(-zv))
            for c in range(cw):
                yr[c] = acc[c]

    @_jit(**_JIT)
    def _run(task_lo, task_hi, W, G, softplus, has_z, z,
             u1, d1, b1, A1, B1, C1, D1, rev1,
             two, u2, d2, b2, A2, B2, C2, D2,
             has_h0, h0, want_hT, hT, y):
        """Tasks task_lo .. task_hi: (batch row, group, channel block). First pass
        (u1, ..., reverse=rev1), then, with ``two``, a reverse pass (u2, ...) added to it
        (bidirectional; the gate is applied once, to the sum)."""
        d = u1.shape[2]
        N = A1.shape[0]
        dg = d // G
        nblk = (dg + W - 1) // W
        h, dtv, dtuv, acc = _work_arrays(N, W)
        for task in range(task_lo, task_hi):
            bi, g, _, d0, cw = _task_of(task, G, nblk, dg, W)
            for n in range(N):
                for c in range(cw):
                    h[n, c] = h0[bi, d0 + c, n] if has_h0 else _ZERO
            _scan_pass(u1, d1, b1, softplus, A1, B1, C1, D1, z, has_z and not two, y, False,
                       h, bi, g, d0, cw, rev1, dtv, dtuv, acc)
            if want_hT:
                for n in range(N):
                    for c in range(cw):
                        hT[bi, d0 + c, n] = h[n, c]
            if two:
                for n in range(N):
                    for c in range(cw):
                        h[n, c] = _ZERO
                _scan_pass(u2, d2, b2, softplus, A2, B2, C2, D2, z, has_z, y, True,
                           h, bi, g, d0, cw, True, dtv, dtuv, acc)

    @_jit(**_JIT)
    def _conv_rows(lo, hi, x, w, bias, ctx, has_ctx, reverse, activation, y):
        """Depthwise conv (+ SiLU) of rows lo .. hi of the flattened (batch, length) grid,
        channel-last: y[b, t] = bias + sum_j w[j] * xx[b, t + j] with xx the input
        padded by the context (before x, or after it for ``reverse``, whose taps are
        mirrored; zeros without one). Channels are the vectorised inner loop; rows
        whose taps all fall inside x (all but K - 1 per sequence) take one pass."""
        L = x.shape[1]
        d = x.shape[2]
        K = w.shape[0]
        km1 = K - 1
        acc = np.empty(d, dtype=np.float32)
        for row in range(lo, hi):
            bi = row // L
            t = row - bi * L
            p0 = t if reverse else t - km1  # the taps read x[p0 .. p0 + km1]
            if K == 4 and p0 >= 0 and p0 + 3 < L:
                if reverse:  # tap j reads x[t + km1 - j]
                    for c in range(d):
                        acc[c] = (bias[c] + w[3, c] * x[bi, p0, c] + w[2, c] * x[bi, p0 + 1, c]
                                  + w[1, c] * x[bi, p0 + 2, c] + w[0, c] * x[bi, p0 + 3, c])
                else:
                    for c in range(d):
                        acc[c] = (bias[c] + w[0, c] * x[bi, p0, c] + w[1, c] * x[bi, p0 + 1, c]
                                  + w[2, c] * x[bi, p0 + 2, c] + w[3, c] * x[bi, p0 + 3, c])
            else:
                for c in range(d):
                    acc[c] = bias[c]
                for j in range(K):
                    p = t + km1 - j if reverse else t - km1 + j
                    if 0 <= p < L:
                        for c in range(d):
                            acc[c] += w[j, c] * x[bi, p, c]
                    elif has_ctx:
                        q = p - L if reverse else p + km1
                        for c in range(d):
                            acc[c] += w[j, c] * ctx[bi, q, c]
            if activation:
                for c in range(d):
                    v = acc[c]
                    y[bi, t, c] = v / (_ONE + _exp(-v))
            else:
                for c in range(d):
                    y[bi, t, c] = acc[c]

    _JIT_SUM = dict(_JIT, fastmath=_FM | {"reassoc"})  # the row sums may be reordered

    @_jit(**_JIT_SUM)
    def _rms_rows(lo, hi, x, w, eps, y):
        """RMSNorm of rows lo .. hi of x (rows, d): x * rsqrt(mean(x^2) + eps) * w, in fp32."""
        d = x.shape[1]
        for row in range(lo, hi):
            xr = x[row]
            ss = np.float32(0.0)
            for c in range(d):
                ss += xr[c] * xr[c]
            r = np.float32(1.0) / np.sqrt(ss / np.float32(d) + eps)
            yr = y[row]
            for c in range(d):
                yr[c] = xr[c] * r * w[c]


    # -- entry points for a team of threads ----------------------------------------
    # Each kernel has a C-callable body ``void body(int64 *params)`` that any number of
    # threads may run at once: they share out the tasks through an atomic counter
    # (params[0]) and write disjoint outputs. The arrays travel as addresses in params.

    @intrinsic
    def _as_i64p(typingctx, p):
        """void* -> int64*."""
        sig = types.CPointer(types.int64)(types.voidptr)

        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], _ir.IntType(64).as_pointer())

        return sig, codegen

    @intrinsic
    def _as_f32p(typingctx, a):
        """int64 address -> float32*."""
        sig = types.CPointer(types.float32)(types.int64)

        def codegen(context, builder, signature, args):
            return builder.inttoptr(args[0], _ir.FloatType().as_pointer())

        return sig, codegen

    @intrinsic
    def _fetch_add(typingctx, ptr, val):
        """Atomic ``*ptr += val``, returning the old value."""
        sig = types.int64(types.CPointer(types.int64), types.int64)

        def codegen(context, builder, signature, args):
            return builder.atomic_rmw("add", args[0], args[1], "monotonic")

        return sig, codegen

    _CJIT = dict(cache=True, error_model="numpy", fastmath=_FM)

    @_jit(**_JIT)
    def _a1(a, n):
        return carray(_as_f32p(a), (n,))

    @_jit(**_JIT)
    def _a2(a, n0, n1):
        return carray(_as_f32p(a), (n0, n1))

    @_jit(**_JIT)
    def _a3(a, n0, n1, n2):
        return carray(_as_f32p(a), (n0, n1, n2))

    @_jit(**_JIT)
    def _a4(a, n0, n1, n2, n3):
        return carray(_as_f32p(a), (n0, n1, n2, n3))

    @cfunc(types.void(types.voidptr), **_CJIT)
    def _scan_body(data):
        """params: counter, ntask, W, G, b, L, d, N, softplus, has_z, rev1, two, has_h0,
        want_hT, then the addresses z, (u, delta, bias, A, B, C, D) x 2, h0, hT, y
        (an absent array's address is another one's: it is never read)."""
        cnt = _as_i64p(data)
        p = carray(cnt, (32,))
        ntask, W, G, b, L, d, N = p[1], p[2], p[3], p[4], p[5], p[6], p[7]
        z = _a3(p[14], b, L, d)
        u1, d1, b1 = _a3(p[15], b, L, d), _a3(p[16], b, L, d), _a1(p[17], d)
        A1, B1, C1 = _a2(p[18], N, d), _a4(p[19], b, L, G, N), _a4(p[20], b, L, G, N)
        D1 = _a1(p[21], d)
        u2, d2, b2 = _a3(p[22], b, L, d), _a3(p[23], b, L, d), _a1(p[24], d)
        A2, B2, C2 = _a2(p[25], N, d), _a4(p[26], b, L, G, N), _a4(p[27], b, L, G, N)
        D2 = _a1(p[28], d)
        h0, hT, y = _a3(p[29], b, d, N), _a3(p[30], b, d, N), _a3(p[31], b, L, d)
        while True:
            task = _fetch_add(cnt, 1)
            if task >= ntask:
                break
            _run(task, task + 1, W, G, p[8] != 0, p[9] != 0, z,
                 u1, d1, b1, A1, B1, C1, D1, p[10] != 0,
                 p[11] != 0, u2, d2, b2, A2, B2, C2, D2,
                 p[12] != 0, h0, p[13] != 0, hT, y)

    @cfunc(types.void(types.voidptr), **_CJIT)
    def _conv_body(data):
        """params: counter, ntask, rows per task, b, L, d, K, has_ctx, reverse, activation,
        then the addresses x, w, bias, ctx, y."""
        cnt = _as_i64p(data)
        p = carray(cnt, (15,))
        ntask, chunk, b, L, d, K = p[1], p[2], p[3], p[4], p[5], p[6]
        has_ctx = p[7] != 0
        x, w, bias = _a3(p[10], b, L, d), _a2(p[11], K, d), _a1(p[12], d)
        ctx = _a3(p[13], b if has_ctx else 1, K - 1 if has_ctx else 1, d)
        y = _a3(p[14], b, L, d)
        rows = b * L
        while True:
            task = _fetch_add(cnt, 1)
            if task >= ntask:
                break
            lo = task * chunk
            _conv_rows(lo, min(rows, lo + chunk), x, w, bias, ctx, has_ctx, p[8] != 0, p[9] != 0, y)

    @cfunc(types.void(types.voidptr), **_CJIT)
    def _norm_body(data):
        """params: counter, ntask, rows per task, rows, d, then the addresses x, w, eps, y."""
        cnt = _as_i64p(data)
        p = carray(cnt, (9,))
        ntask, chunk, rows, d = p[1], p[2], p[3], p[4]
        x, w, eps, y = _a2(p[5], rows, d), _a1(p[6], d), _a1(p[7], 1), _a2(p[8], rows, d)
        while True:
            task = _fetch_add(cnt, 1)
            if task >= ntask:
                break
            lo = task * chunk
            _rms_rows(lo, min(rows, lo + chunk), x, w, eps[0], y)


# -- Python side ------------------------------------------------------------------

_BODY_T = ctypes.CFUNCTYPE(None, ctypes.c_void_p)  # ctypes calls release the GIL
_PID = os.getpid()
_OMP = {"fn": None, "looked": False}
_POOL: Optional[ThreadPoolExecutor] = None
_POOL_KEY = (0, 0)
_LOCK = threading.Lock()


def _torch_openmp():
    """``GOMP_parallel`` of the OpenMP runtime torch's own ops run on, or None.

    Running the kernels' bodies as an OpenMP region of that runtime puts them on the
    very threads torch uses: right after a torch op those threads still spin-wait for
    the next region (GNU OpenMP's default), and a pool of our own would have to share
    the cores with them (measured: a third more CPU time per forward on 2 cores)."""
    with _LOCK:
        if not _OMP["looked"]:
            _OMP["looked"] = True
            try:
                _OMP["fn"] = _find_gomp_parallel()
            except Exception:  # pragma: no cover - depends on the platform
                _OMP["fn"] = None
        return _OMP["fn"]


def _find_gomp_parallel():
    if not sys.platform.startswith("linux") or "OpenMP" not in torch.__config__.parallel_info():
        return None
    torch_dir = os.path.dirname(torch.__file__)
    libs = []
    with open("/proc/self/maps") as f:
        for line in f:
            path = line.split()[-1] if len(line.split()) >= 6 else ""
            base = os.path.basename(path)
            if base.startswith(("libgomp", "libiomp5", "libomp")) and path not in libs:
                libs.append(path)
    # the runtime torch itself links: its bundled copy when there is one
    libs.sort(key=lambda p: not p.startswith(torch_dir))
    if not libs:
        return None
    fn = ctypes.CDLL(libs[0]).GOMP_parallel
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
    fn.restype = None
    return fn


def _pool(workers: int) -> ThreadPoolExecutor:
    """A pool of ``workers`` threads, rebuilt after fork or when the count changes."""
    global _POOL, _POOL_KEY
    key = (os.getpid(), workers)
    with _LOCK:
        if _POOL is None or _POOL_KEY != key:
            _POOL = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mambadna-scan")
            _POOL_KEY = key
        return _POOL


def _parallel(body, params: np.ndarray, threads: int) -> None:
    """Run ``body(params)`` on ``threads`` threads at once (they share the tasks out
    through the counter params[0]): torch's OpenMP team where there is one, else the
    calling thread plus a small pool (also in a forked child, where an inherited
    OpenMP runtime is not safe to use)."""
    params[0] = 0
    addr = params.ctypes.data
    if threads <= 1:
        _BODY_T(body.address)(addr)
        return
    gomp = _torch_openmp() if os.getpid() == _PID else None
    if gomp is not None:
        gomp(body.address, addr, threads, 0)
        return
    fn = _BODY_T(body.address)
    futs = [_pool(threads - 1).submit(fn, addr) for _ in range(threads - 1)]
    fn(addr)
    for f in futs:
        f.result()


def _threads(work: int) -> int:
    """torch's thread count, or 1 for work too small to share."""
    return max(1, torch.get_num_threads()) if work >= _SERIAL_WORK else 1


_SERIAL_WORK = 1 << 16  # below this many (state or channel) updates one thread does it all


def _f32(t: Optional[Tensor]) -> Optional[np.ndarray]:
    if t is None:
        return None
    return t.detach().to(torch.float32).contiguous().numpy()


def _exp2_rates(A) -> np.ndarray:
    """A (d_inner, d_state) as the kernels take it: log2(e) A^T (d_state, d_inner), fp32,
    since exp(dt A) = 2^(dt log2(e) A)."""
    return np.ascontiguousarray((_f32(A) * np.float32(np.log2(np.e))).T)


def _dir_arrays(u, delta, A, B, C, D, delta_bias, d):
    zeros = np.zeros(d, dtype=np.float32)
    return [_f32(u), _f32(delta), zeros if delta_bias is None else _f32(delta_bias),
            _exp2_rates(A), _f32(B), _f32(C), zeros if D is None else _f32(D)]


def _scan(b, L, d, N, G, softplus, z, d1, rev1, d2, h0, hT, y, work) -> None:
    """Run the scan tasks, (batch row, group, block of up to W channels) each: the
    direction d1 (arrays of :func:`_dir_arrays`; reversed with ``rev1``), then, given
    d2, the reverse direction d2 added to it (the bidirectional scan)."""
    if d % G != 0:
        raise ValueError(f"d_inner={d} is not divisible by n_groups={G}")
    threads = _threads(work)
    dg = d // G
    W = _W_MAX
    # smaller blocks when there would be too few tasks to keep the threads busy
    while W > 8 and b * G * ((dg + W - 1) // W) < 4 * threads:
        W //= 2
    ntask = b * G * ((dg + W - 1) // W)
    arrays = [y if z is None else z, *d1, *(d1 if d2 is None else d2),
              y if h0 is None else h0, y if hT is None else hT, y]
    params = np.array([0, ntask, W, G, b, L, d, N, softplus, z is not None, rev1, d2 is not None,
                       h0 is not None, hT is not None] + [a.ctypes.data for a in arrays],
                      dtype=np.int64)
    _parallel(_scan_body, params, min(threads, ntask))  # `arrays` keeps the buffers alive


def selective_scan_cpu(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       initial_state=None, return_final_state=False, reverse=False):
    """:func:`selective_scan_ref` without autograd, compiled (see the module doc).
    Inputs of any float dtype are computed in fp32; y comes back in u's dtype."""
    CALLS["scan"] += 1
    b, L, d = u.shape
    N = A.shape[-1]
    G = B.shape[2]
    y = torch.empty(b, L, d, dtype=torch.float32)
    hT = torch.empty(b, d, N, dtype=torch.float32)
    if L == 0:
        hT = torch.zeros(b, d, N) if initial_state is None else initial_state.detach().float().clone()
    else:
        d1 = _dir_arrays(u, delta, A, B, C, D, delta_bias, d)
        _scan(b, L, d, N, G, bool(delta_softplus), _f32(z), d1, bool(reverse), None,
              _f32(initial_state), hT.numpy(), y.numpy(), b * L * d * N)
    y = y.to(u.dtype)
    return (y, hT) if return_final_state else y


def bidirectional_selective_scan_cpu(u_f, delta_f, A_f, B_f, C_f, u_r, delta_r, A_r, B_r, C_r,
                                     D_f=None, D_r=None, z=None, delta_bias_f=None,
                                     delta_bias_r=None, delta_softplus=False):
    """:func:`bidirectional_selective_scan_ref` without autograd: each task runs the
    forward then the reverse scan of its channels, the gate applied once to the sum."""
    CALLS["bidirectional"] += 1
    b, L, d = u_f.shape
    N = A_f.shape[-1]
    G = B_f.shape[2]
    if B_r.shape[2] != G or A_r.shape[-1] != N:  # pragma: no cover - one config per model
        raise ValueError("both directions need the same n_groups and d_state")
    y = torch.empty(b, L, d, dtype=torch.float32)
    if L:
        d1 = _dir_arrays(u_f, delta_f, A_f, B_f, C_f, D_f, delta_bias_f, d)
        d2 = _dir_arrays(u_r, delta_r, A_r, B_r, C_r, D_r, delta_bias_r, d)
        _scan(b, L, d, N, G, bool(delta_softplus), _f32(z), d1, False, d2, None, None, y.numpy(),
              2 * b * L * d * N)
    return y.to(u_f.dtype)


def selective_state_update_cpu(state, u, delta, A, B, C, D=None, z=None, delta_bias=None,
                               delta_softplus=False):
    """:func:`selective_state_update_ref` without autograd: one step of the compiled scan."""
    y, h = selective_scan_cpu(u.unsqueeze(1), delta.unsqueeze(1), A, B.unsqueeze(1), C.unsqueeze(1),
                              D, None if z is None else z.unsqueeze(1), delta_bias, delta_softplus,
                              state, True)
    return y[:, 0], h


def _row_tasks(rows: int, d: int):
    """(threads, ntask, rows per task) for a row-wise kernel over (rows, d)."""
    threads = _threads(rows * d)
    chunk = max(1, min(64, -(-rows // (4 * threads))))
    return threads, -(-rows // chunk), chunk


def conv1d_silu_cpu(x, weight, bias=None, context=None, reverse=False, activation=True):
    """:func:`conv1d_silu_ref` without autograd, channel-last and in one pass (no
    transposes, no concatenated copy); computed in fp32, returned in x's dtype."""
    CALLS["conv"] += 1
    b, L, d = x.shape
    K = weight.shape[-1]
    y = torch.empty(b, L, d, dtype=torch.float32)
    if b * L:
        w = np.ascontiguousarray(_f32(weight.reshape(d, K)).T)           # (K, d)
        bb = np.zeros(d, dtype=np.float32) if bias is None else _f32(bias)
        xx = _f32(x)
        has_ctx = context is not None and K > 1
        ctx = _f32(context) if has_ctx else np.zeros((1, 1, d), dtype=np.float32)
        yy = y.numpy()
        threads, ntask, chunk = _row_tasks(b * L, d)
        params = np.array([0, ntask, chunk, b, L, d, K, has_ctx, bool(reverse), bool(activation),
                           xx.ctypes.data, w.ctypes.data, bb.ctypes.data, ctx.ctypes.data,
                           yy.ctypes.data], dtype=np.int64)
        _parallel(_conv_body, params, min(threads, ntask))
    return y.to(x.dtype)


def rms_norm_cpu(x, weight, eps=1e-5, out_dtype=None):
    """:func:`rms_norm_ref` without autograd (fp32 compute, output in ``out_dtype``)."""
    CALLS["norm"] += 1
    d = x.shape[-1]
    xx = _f32(x).reshape(-1, d)
    y = torch.empty(x.shape, dtype=torch.float32)
    rows = xx.shape[0]
    if rows:
        yy = y.numpy().reshape(-1, d)
        ww = _f32(weight)
        ee = np.array([eps], dtype=np.float32)
        threads, ntask, chunk = _row_tasks(rows, d)
        params = np.array([0, ntask, chunk, rows, d, xx.ctypes.data, ww.ctypes.data, ee.ctypes.data,
                           yy.ctypes.data], dtype=np.int64)
        _parallel(_norm_body, params, min(threads, ntask))
    return y.to(out_dtype or x.dtype)


def warmup() -> None:
    """Run every kernel once on a tiny problem (compiled code is loaded at import)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, 4, generator=g)
    A = -torch.rand(4, 2, generator=g)
    Bm = torch.randn(1, 3, 1, 2, generator=g)
    selective_scan_cpu(x, x, A, Bm, Bm, x[0, 0], x, x[0, 0], True, None, True)
    bidirectional_selective_scan_cpu(x, x, A, Bm, Bm, x, x, A, Bm, Bm, None, None, x, None, None, True)
    conv1d_silu_cpu(x, torch.ones(4, 2), None, x[:, :1])
    rms_norm_cpu(x, x[0, 0])
