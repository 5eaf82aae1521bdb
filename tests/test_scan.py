"""Triton selective scan vs the sequential reference (issue 3).

On CPU these run under TRITON_INTERPRET=1 (set in conftest.py) with tiny chunks so
the multi-chunk and multi-block paths are exercised; on a GPU the `gpu` tests also
check realistic shapes.
"""
from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton")

from mambadna.kernels import (  # noqa: E402
    bidirectional_selective_scan,
    selective_scan,
    selective_state_update,
)
from mambadna.kernels.scan import triton as ts  # noqa: E402
from mambadna.kernels.scan.reference import (  # noqa: E402
    bidirectional_selective_scan_ref,
    selective_scan_ref,
)

DEV = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: 2e-4, torch.float16: 5e-3, torch.bfloat16: 2e-2}
NAMES = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias", "h0"]


@pytest.fixture(autouse=True)
def small_chunks():
    """Tiny chunks/blocks on the interpreter so every cross-chunk path runs."""
    old = dict(ts.CONFIG)
    if DEV == "cpu":
        # segments of 16 positions: two or more per sequence at these shapes, so the
        # segment-state kernel, the cross-segment combine (in blocks of 2), partial
        # segments and partial 8-step checkpoint blocks all run; 4 channels a program
        # (the backward uses 2 channels a program, so its blocking differs from the forward's)
        ts.CONFIG.update(seg=16, block_d=4, block_d_bwd=2, combine_chunks=2, combine_lanes=16,
                         min_programs=10**9)
    yield
    ts.CONFIG.clear()
    ts.CONFIG.update(old)


def rel(a, b):
    a, b = a.double(), b.double()
    a, b = a.detach(), b.detach()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def make(b, L, D, N, G, dtype, seed, with_d=True, with_z=True, with_bias=True, h0=True):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    u = r(b, L, D).to(dtype)
    delta = (0.5 * r(b, L, D) - 0.5).to(dtype)
    A = -(torch.rand(D, N, generator=g) * 3 + 0.1)
    B = r(b, L, G, N).to(dtype)
    C = r(b, L, G, N).to(dtype)
    Dv = r(D) if with_d else None
    z = r(b, L, D).to(dtype) if with_z else None
    bias = 0.3 * r(D) if with_bias else None
    h = r(b, D, N) if h0 else None
    ts_ = [u, delta, A, B, C, Dv, z, bias, h]
    return [None if t is None else t.to(DEV).requires_grad_() for t in ts_]


def run(fn, args, softplus, rev, gy, gh):
    u, delta, A, B, C, Dv, z, bias, h = args
    y, hT = fn(u, delta, A, B, C, Dv, z, bias, softplus, h, True, rev)
    loss = (y.float() * gy).sum() + (hT * gh).sum()
    live = [t for t in args if t is not None]
    grads = torch.autograd.grad(loss, live)
    it = iter(grads)
    return y, hT, [None if t is None else next(it) for t in args]


def check(args, softplus, rev, dtype, seed=1):
    b, L, D = args[0].shape
    N = args[2].shape[1]
    g = torch.Generator().manual_seed(seed + 100)
    gy = torch.randn(b, L, D, generator=g).to(DEV)
    gh = torch.randn(b, D, N, generator=g).to(DEV)
    y1, h1, g1 = run(ts.selective_scan_triton, args, softplus, rev, gy, gh)
    y2, h2, g2 = run(selective_scan_ref, args, softplus, rev, gy, gh)
    tol = TOL[dtype]
    assert y1.dtype == dtype and y1.shape == y2.shape
    assert h1.dtype == torch.float32
    assert torch.isfinite(y1).all()
    assert rel(y1, y2) < tol, ("y", rel(y1, y2))
    assert rel(h1, h2) < tol, ("hT", rel(h1, h2))
    for name, a, c in zip(NAMES, g1, g2):
        if c is None:
            assert a is None
            continue
        assert a.dtype == c.dtype, name
        assert torch.isfinite(a).all(), name
        assert rel(a, c) < tol * 2, (name, rel(a, c))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("rev", [False, True])
def test_matches_reference_all_options(dtype, rev):
    args = make(2, 21, 8, 4, 2, dtype, seed=3 + rev)
    check(args, softplus=True, rev=rev, dtype=dtype)


@pytest.mark.parametrize("rev", [False, True])
def test_single_pass_and_many_segments(rev):
    """One segment per sequence (no segment-state pass; forward) and the shortest
    segments, one checkpoint block each (reverse)."""
    ts.CONFIG.update(min_programs=1) if not rev else ts.CONFIG.update(seg=8)
    args = make(2, 29, 8, 4, 1, torch.float32, seed=13 + rev)
    check(args, softplus=True, rev=rev, dtype=torch.float32)


@pytest.mark.parametrize("rev", [False, True])
def test_longer_segments_when_programs_suffice(rev):
    """seg_long: segments of 32 instead of 16 once batch x d-blocks x segments of 32
    reaches seg_long_programs (2 x 2 x 2 = 8 here), with the same results."""
    args = make(2, 37, 8, 4, 2, torch.float32, seed=17 + rev)
    ts.CONFIG.update(seg=16, block_d=4, min_programs=10**9)  # (the CPU fixture's; also on a GPU)
    ts.CONFIG.update(seg_long=32, seg_long_programs=9)
    assert ts._Geom(args[0], args[2], args[3]).SEG == 16
    ts.CONFIG.update(seg_long_programs=8)
    assert ts._Geom(args[0], args[2], args[3]).SEG == 32
    check(args, softplus=True, rev=rev, dtype=torch.float32)


@pytest.mark.parametrize("rev", [False, True])
def test_unvectorised_kernel_variant(rev):
    """The other compilation of every kernel compute the same: the forward kernels with
    the channel stride unknown (vec False; the default specialises it) and the backward
    kernel with it specialised (vec_bwd True; the default leaves it unknown)."""
    ts.CONFIG.update(vec=False, vec_bwd=True)
    args = make(2, 21, 8, 4, 2, torch.bfloat16, seed=23 + rev)
    check(args, softplus=True, rev=rev, dtype=torch.bfloat16)


@pytest.mark.parametrize("rev", [False, True])
def test_combine_more_chunks_a_step(rev):
    """combine_tile: the cross-segment combine takes more segments a block step when its
    programs have few lanes (here 4 instead of 2), with the same results."""
    ts.CONFIG.update(combine_tile=64)
    args = make(1, 70, 4, 4, 1, torch.float32, seed=71 + rev)
    check(args, softplus=True, rev=rev, dtype=torch.float32)


@pytest.mark.parametrize("ckpt,sub,bd_bwd", [(8, 4, 4), (8, 2, 8), (4, 4, 4), (4, 2, 4)])
def test_backward_blockings(ckpt, sub, bd_bwd):
    """Other backward tunables (checkpoint spacing, recompute sub-block, channels a
    program) give the same gradients, including partial blocks at the segment end."""
    ts.CONFIG.update(ckpt=ckpt, sub=sub, block_d_bwd=bd_bwd)
    args = make(2, 29, 8, 4, 2, torch.float32, seed=31 + ckpt + sub)
    check(args, softplus=True, rev=sub == 2, dtype=torch.float32)


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("rev", [False, True])
def test_backward_in_segment_groups(groups, rev):
    """A checkpoint budget smaller than the whole sequence's checkpoints: the backward
    runs over groups of `groups` segments (the last one partial: 3 segments), each group's
    checkpoints then its gradients, with the same results."""
    b, L, D, N = 2, 37, 8, 4
    F = ts.CONFIG["ckpt"]
    ts.CONFIG["bwd_ckpt_bytes"] = groups * b * (16 // F) * N * D * 4  # 16: the fixture's segment
    ts.CONFIG["fwd_ckpt_bytes"] = 0  # the backward computes its checkpoints itself
    args = make(b, L, D, N, 2, torch.float32, seed=41 + groups)
    check(args, softplus=True, rev=rev, dtype=torch.float32)


def _saved_ckpt(y):
    """The checkpoint buffer the forward saved for the backward (None: not saved)."""
    return y.grad_fn.saved_tensors[-1]


@pytest.mark.parametrize("rev", [False, True])
def test_backward_checkpoints_from_forward(rev):
    """The forward writes the backward's checkpoints when gradients are to come, while the
    buffers alive stay within fwd_ckpt_bytes; the gradients equal those of the backward's
    own checkpoint pass (and the reference); a CONFIG changed between forward and backward
    still gives them (the saved checkpoints where the kernel takes them, else recomputed)."""
    # on a GPU a shape the Gluon backward takes (32-channel blocks, segments of 128)
    b, L, D, N, G = (2, 37, 8, 4, 2) if DEV == "cpu" else (2, 300, 64, 16, 1)
    args = make(b, L, D, N, G, torch.float32, seed=45 + rev)
    u, delta, A, B, C, Dv, z, bias, h = args
    geom = ts._Geom(u, A, B)
    live0 = ts._LIVE_CK[0]
    y, hT = ts.selective_scan_triton(u, delta, A, B, C, Dv, z, bias, True, h, True, rev)
    ck = _saved_ckpt(y)
    assert ck is not None and ck.shape[0] == b and ck.shape[2:] == (N, D)
    CK = geom.NS * geom.SEG // ck.shape[1]
    if DEV == "cpu":  # the Triton backward: every ckpt positions
        assert CK == ts.CONFIG["ckpt"]
    else:  # the Gluon backward: fwd_fine
        assert CK == ts.CONFIG["fwd_fine"]
    size = ck.numel() * 4
    assert ts._LIVE_CK[0] == live0 + size
    y2, hT2 = ts.selective_scan_triton(u, delta, A, B, C, Dv, z, bias, True, h, True, rev)
    assert _saved_ckpt(y2) is not None and ts._LIVE_CK[0] == live0 + 2 * size
    del y, hT, y2, hT2, ck  # freed with their graphs: no longer counted
    assert ts._LIVE_CK[0] == live0
    ts.CONFIG["fwd_ckpt_bytes"] = live0 + size - 1
    y, hT = ts.selective_scan_triton(u, delta, A, B, C, Dv, z, bias, True, h, True, rev)
    ck = _saved_ckpt(y)
    if DEV == "cpu":  # no other spacing: none saved
        assert ck is None
    else:  # the sparser bwd_fine fits
        assert ck is not None and geom.NS * geom.SEG // ck.shape[1] == ts.CONFIG["bwd_fine"]
    del y, hT, ck
    assert ts._fwd_ckpt(geom, u, A, B, False) == (None, 0)  # no gradient to come: nothing allocated
    g = torch.Generator().manual_seed(7)
    gy = torch.randn(b, L, D, generator=g).to(DEV)
    gh = torch.randn(b, D, N, generator=g).to(DEV)
    ts.CONFIG["fwd_ckpt_bytes"] = 0
    _, _, g_re = run(ts.selective_scan_triton, args, True, rev, gy, gh)
    ts.CONFIG["fwd_ckpt_bytes"] = None
    _, _, g_fw = run(ts.selective_scan_triton, args, True, rev, gy, gh)
    for name, a, c in zip(NAMES, g_fw, g_re):
        assert rel(a, c) < 1e-5, name
    y, hT = ts.selective_scan_triton(u, delta, A, B, C, Dv, z, bias, True, h, True, rev)
    assert _saved_ckpt(y) is not None
    ts.CONFIG.update(ckpt=4, bwd_fine=0)
    g_mis = torch.autograd.grad((y.float() * gy).sum() + (hT * gh).sum(), [t for t in args if t is not None])
    for name, a, c in zip(NAMES, g_mis, g_re):
        assert rel(a, c) < 1e-5, name
    check(args, softplus=True, rev=rev, dtype=torch.float32)


@pytest.mark.parametrize("L", [1, 8, 13])
@pytest.mark.parametrize("rev", [False, True])
def test_matches_reference_plain(L, rev):
    args = make(1, L, 6, 3, 1, torch.float32, seed=L, with_d=False, with_z=False,
                with_bias=False, h0=False)
    # delta is used raw without softplus: keep it positive
    with torch.no_grad():
        args[1].abs_()
    check(args, softplus=False, rev=rev, dtype=torch.float32)


def test_matches_reference_multiblock_d_and_groups():
    # d_inner 24, 3 groups of 8: several d-blocks per group, N not a power of two
    args = make(2, 19, 24, 5, 3, torch.float32, seed=7)
    check(args, softplus=True, rev=False, dtype=torch.float32)


def test_strided_inputs():
    """B and C as slices of one projection; u a non-contiguous view along length."""
    g = torch.Generator().manual_seed(11)
    b, L, D, N = 2, 17, 8, 4
    xbc = torch.randn(b, L, 1, 2 * N + 3, generator=g).to(DEV)
    big_u = torch.randn(b, L, 2 * D, generator=g).to(DEV)
    u = big_u[..., :D]
    delta = torch.randn(b, L, D, generator=g).to(DEV)
    A = -torch.rand(D, N, generator=g).to(DEV) - 0.5
    B, C = xbc[..., :N], xbc[..., N:2 * N]
    y1 = ts.selective_scan_triton(u, delta, A, B, C, None, None, None, True)
    y2 = selective_scan_ref(u, delta, A, B, C, None, None, None, True)
    assert rel(y1, y2) < 1e-4


@pytest.mark.parametrize("rev", [False, True])
def test_strided_inputs_backward(rev):
    """Gradients with u, delta, z in three different layouts (a length-major transpose, a
    contiguous tensor, a slice) and B, C as slices: every gradient matches the reference."""
    g = torch.Generator().manual_seed(12 + rev)
    b, L, D, N = 2, 19, 8, 4
    u = torch.randn(L, b, D, generator=g).to(DEV).transpose(0, 1)
    delta = (0.5 * torch.randn(b, L, D, generator=g) - 0.5).to(DEV)
    z = torch.randn(b, L, 3 * D, generator=g).to(DEV)[..., D:2 * D]
    xbc = torch.randn(b, L, 1, 2 * N + 3, generator=g).to(DEV)
    A = (-torch.rand(D, N, generator=g) - 0.5).to(DEV)
    leaves = [t.requires_grad_() for t in (u, delta, z, xbc, A)]
    gy = torch.randn(b, L, D, generator=g).to(DEV)
    grads = []
    for fn in (ts.selective_scan_triton, selective_scan_ref):
        y = fn(u, delta, A, xbc[..., :N], xbc[..., N:2 * N], None, z, None, True, None, False, rev)
        grads.append(torch.autograd.grad((y * gy).sum(), leaves))
    for name, a, c in zip(["u", "delta", "z", "BC", "A"], *grads):
        assert rel(a, c) < 1e-4, (name, rel(a, c))


@pytest.mark.parametrize("rev", [False, True])
def test_split_anywhere(rev):
    """Scanning x[:k] then x[k:] from the carried state equals scanning x (y, grads)."""
    args = make(2, 23, 8, 4, 1, torch.float32, seed=5)
    u, delta, A, B, C, Dv, z, bias, h = args
    g = torch.Generator().manual_seed(9)
    gy = torch.randn(u.shape, generator=g).to(DEV)
    gh = torch.randn(h.shape, generator=g).to(DEV)
    full_y, full_h, full_g = run(ts.selective_scan_triton, args, True, rev, gy, gh)
    for k in (1, 11):  # a length-1 piece; a split inside a chunk
        first = slice(k, None) if rev else slice(0, k)
        second = slice(0, k) if rev else slice(k, None)
        sl = lambda t, s: t[:, s]  # noqa: E731
        y_a, h_a = ts.selective_scan_triton(sl(u, first), sl(delta, first), A, sl(B, first),
                                            sl(C, first), Dv, sl(z, first), bias, True, h,
                                            True, rev)
        y_b, h_b = ts.selective_scan_triton(sl(u, second), sl(delta, second), A,
                                            sl(B, second), sl(C, second), Dv, sl(z, second),
                                            bias, True, h_a, True, rev)
        y = torch.cat([y_b, y_a] if rev else [y_a, y_b], dim=1)
        assert rel(y, full_y) < 1e-5
        assert rel(h_b, full_h) < 1e-5
        loss = (y * gy).sum() + (h_b * gh).sum()
        grads = torch.autograd.grad(loss, args)
        for name, a, c in zip(NAMES, grads, full_g):
            assert rel(a, c) < 1e-5, (k, name, rel(a, c))


def test_reverse_equals_flipped():
    args = make(2, 18, 8, 4, 2, torch.float32, seed=12)
    u, delta, A, B, C, Dv, z, bias, h = args
    gy = torch.randn(u.shape).to(DEV)
    f = lambda t: t.flip(1)  # noqa: E731
    y_r, h_r = ts.selective_scan_triton(u, delta, A, B, C, Dv, z, bias, True, h, True, True)
    y_f, h_f = ts.selective_scan_triton(f(u), f(delta), A, f(B), f(C), Dv, f(z), bias, True,
                                        h, True, False)
    assert rel(y_r, f(y_f)) < 1e-5 and rel(h_r, h_f) < 1e-5
    g_r = torch.autograd.grad((y_r * gy).sum() + h_r.sum(), args)
    g_f = torch.autograd.grad((f(y_f) * gy).sum() + h_f.sum(), args)
    for name, a, c in zip(NAMES, g_r, g_f):
        assert rel(a, c) < 1e-5, name


@pytest.mark.parametrize("dtype,with_z", [(torch.float32, True), (torch.bfloat16, False), (torch.bfloat16, True)])
def test_bidirectional(dtype, with_z):
    fa = make(2, 21, 8, 4, 1, dtype, seed=21, with_z=with_z, h0=False)
    ra = make(2, 21, 8, 4, 1, dtype, seed=22, with_z=False, h0=False)
    z = fa[6]
    args = fa[:5] + ra[:5] + [fa[5], ra[5], z, fa[7], ra[7]]
    y1 = ts.bidirectional_selective_scan_triton(*args, delta_softplus=True)
    y2 = bidirectional_selective_scan_ref(*args, delta_softplus=True)
    tol = TOL[dtype]
    assert y1.dtype == dtype
    assert rel(y1, y2) < tol
    gy = torch.randn(y1.shape).to(DEV)
    live = [t for t in args if t is not None]
    g1 = torch.autograd.grad((y1.float() * gy).sum(), live)
    g2 = torch.autograd.grad((y2.float() * gy).sum(), live)
    for i, (a, c) in enumerate(zip(g1, g2)):
        assert rel(a, c) < 2 * tol, (i, rel(a, c))
    # the dispatch entry point reaches the same kernel
    y3 = bidirectional_selective_scan(*args, delta_softplus=True, backend="triton")
    assert rel(y3, y1) < 1e-6
    # both directions' checkpoints came from the forward; without them, the same gradients
    assert all(t is not None for t in y3.grad_fn.saved_tensors[-2:])
    ts.CONFIG["fwd_ckpt_bytes"] = 0
    y4 = ts.bidirectional_selective_scan_triton(*args, delta_softplus=True)
    assert all(t is None for t in y4.grad_fn.saved_tensors[-2:])
    g4 = torch.autograd.grad((y4.float() * gy).sum(), live)
    for i, (a, c) in enumerate(zip(g1, g4)):
        assert rel(a, c) < 1e-6, (i, rel(a, c))


def test_state_update_equals_scan():
    args = make(2, 9, 8, 4, 2, torch.float32, seed=31)
    u, delta, A, B, C, Dv, z, bias, h = [t.detach() for t in args]
    y_scan, h_scan = ts.selective_scan_triton(u, delta, A, B, C, Dv, z, bias, True, h, True)
    state = h.clone()
    ys = []
    for t in range(u.shape[1]):
        y_t, state = ts.selective_state_update_triton(state, u[:, t], delta[:, t], A, B[:, t],
                                                      C[:, t], Dv, z[:, t], bias, True)
        ys.append(y_t)
    assert rel(torch.stack(ys, 1), y_scan) < 1e-5
    assert rel(state, h_scan) < 1e-5
    # through the public dispatch, bf16 inputs, no D/z/bias
    yb, sb = selective_state_update(h, u[:, 0].bfloat16(), delta[:, 0].bfloat16(), A,
                                    B[:, 0].bfloat16(), C[:, 0].bfloat16(), backend="triton")
    yr, sr = selective_state_update(h, u[:, 0].bfloat16(), delta[:, 0].bfloat16(), A,
                                    B[:, 0].bfloat16(), C[:, 0].bfloat16(), backend="reference")
    assert yb.dtype == torch.bfloat16 and rel(yb, yr) < 1e-2 and rel(sb, sr) < 1e-4


def test_state_update_differentiable():
    args = make(2, 1, 8, 4, 1, torch.float32, seed=41)
    u, delta, A, B, C, Dv, z, bias, h = args
    y1, s1 = selective_state_update(h, u[:, 0], delta[:, 0], A, B[:, 0], C[:, 0], Dv, z[:, 0],
                                    bias, True, backend="triton")
    y2, s2 = selective_state_update(h, u[:, 0], delta[:, 0], A, B[:, 0], C[:, 0], Dv, z[:, 0],
                                    bias, True, backend="reference")
    g1 = torch.autograd.grad(y1.sum() + s1.sum(), args)
    g2 = torch.autograd.grad(y2.sum() + s2.sum(), args)
    for name, a, c in zip(NAMES, g1, g2):
        assert rel(a, c) < 1e-4, name


def test_dispatch_and_grad_only_through_final_state():
    args = make(1, 12, 4, 2, 1, torch.float32, seed=51)
    u, delta, A, B, C, Dv, z, bias, h = args
    y, hT = selective_scan(u, delta, A, B, C, Dv, z, bias, True, h, True, backend="triton")
    yr, hTr = selective_scan(u, delta, A, B, C, Dv, z, bias, True, h, True, backend="reference")
    assert rel(y, yr) < 1e-4
    g1 = torch.autograd.grad(hT.sum(), [u, delta, A, B, h])
    g2 = torch.autograd.grad(hTr.sum(), [u, delta, A, B, h])
    for a, c in zip(g1, g2):
        assert rel(a, c) < 1e-4


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(2, 64, 16, 1, 4097), (1, 128, 16, 2, 6000)])
@pytest.mark.parametrize("rev", [False, True])
def test_gpu_bf16_realistic(shape, rev):
    b, D, N, G, L = shape
    args = make(b, L, D, N, G, torch.bfloat16, seed=61)
    check(args, softplus=True, rev=rev, dtype=torch.bfloat16)


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(2, 64, 16, 1, 4097), (1, 128, 16, 2, 6000), (3, 96, 8, 1, 700)])
@pytest.mark.parametrize("rev", [False, True])
@pytest.mark.parametrize("variant", [{}, {"gluon_mask_bc": True}, {"bwd_ckpt_bytes": 1, "fwd_ckpt_bytes": 0},
                                     {"fwd_ckpt_bytes": 0}, {"bwd_bc_fp32": False},
                                     {"ckpt": 4},
                                     {"prefetch_bwd": 0}, {"prefetch_bwd": 3, "prefetch_level": "L1"},
                                     {"gluon_reuse": False, "prefetch_bwd": 0},
                                     {"ckpt": 4, "sub": 4, "prefetch_bwd": 2},
                                     {"bwd_fine": 0}, {"bwd_fine": 64}, {"bwd_fine": 16, "bwd_ckpt_bytes": 1, "fwd_ckpt_bytes": 0},
                                     {"bwd_fine": 32, "ckpt": 4, "sub": 2, "prefetch_bwd": 0}])
def test_gpu_gluon_backward(shape, rev, variant):
    """The Gluon backward kernel against the reference: output and every gradient, both
    directions, with n_groups > 1 and d_state 8, for each variant (B/C masking, segment
    groups, checkpoint blocking, prefetch, reuse of the forward step's decay and rows, states
    refined in shared memory from sparser checkpoints, checkpoints from the backward's own
    pass instead of the forward)."""
    from mambadna.kernels.scan import gluon_bwd as gluon_scan_bwd

    if not gluon_scan_bwd.available():
        pytest.skip("this Triton has no Gluon")
    ts.CONFIG.update(dict({"bwd_impl": "gluon"}, **variant))  # restored by the autouse fixture
    b, D, N, G, L = shape
    args = make(b, L, D, N, G, torch.bfloat16, seed=62)
    check(args, softplus=True, rev=rev, dtype=torch.bfloat16)
