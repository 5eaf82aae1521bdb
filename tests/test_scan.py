"""Triton selective scan vs the sequential reference (issue 3).

On CPU these run under TRITON_INTERPRET=1 (set in conftest.py) with tiny blocks
(``ScanTuning.small()``) so the multi-segment and multi-block paths are exercised; on a
GPU (the default tuning) the `gpu` tests also check realistic shapes.
"""
from __future__ import annotations

import contextlib
import dataclasses
import threading

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
    """Tiny blocks on the interpreter so every cross-segment path runs: segments of 16
    positions (two or more per sequence at these shapes: the segment-state kernel, the
    cross-segment combine in blocks of 2 segments, partial segments and checkpoint blocks
    all run), 4 channels a program (2 in the backward, so its blocking differs)."""
    with ts.use_tuning(ts.ScanTuning.small()) if DEV == "cpu" else contextlib.nullcontext():
        yield


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
    args = make(2, 29, 8, 4, 1, torch.float32, seed=13 + rev)
    with ts.use_tuning(**({"seg": 8} if rev else {"min_programs": 1})):
        assert ts._Geom(args[0], args[2], args[3], ts.tuning()).NS == (4 if rev else 1)
        check(args, softplus=True, rev=rev, dtype=torch.float32)


@pytest.mark.parametrize("rev", [False, True])
def test_longer_segments_when_programs_suffice(rev):
    """seg_long: segments of 32 instead of 16 once batch x d-blocks x segments of 32
    reaches seg_long_programs (2 x 2 x 2 = 8 here), with the same results."""
    args = make(2, 37, 8, 4, 2, torch.float32, seed=17 + rev)
    small = ts.ScanTuning.small()  # (the CPU fixture's; also on a GPU)
    with ts.use_tuning(small, seg_long=32, seg_long_programs=9) as tu:
        assert ts._Geom(args[0], args[2], args[3], tu).SEG == 16
    with ts.use_tuning(small, seg_long=32, seg_long_programs=8) as tu:
        assert ts._Geom(args[0], args[2], args[3], tu).SEG == 32
        check(args, softplus=True, rev=rev, dtype=torch.float32)


@pytest.mark.parametrize("tile,steps", [(16, 5), (64, 2)])
@pytest.mark.parametrize("rev", [False, True])
def test_combine_segments_a_step(tile, steps, rev):
    """combine_tile: the cross-segment combine takes combine_tile // lanes segments a block
    step (16 lanes here: one segment a step, or 4 instead of the fixture's 2), carrying the
    state from step to step, with the same results."""
    args = make(1, 70, 4, 4, 1, torch.float32, seed=71 + rev)  # 5 segments of 16
    seen = []
    kernel = ts._chunk_combine_kernel

    class Spy:
        def __getitem__(self, grid):
            def launch(**kw):
                seen.append(-(-kw["NC"] // kw["CB"]))
                return kernel[grid](**kw)
            return launch

    with ts.use_tuning(ts.ScanTuning.small(), combine_tile=tile), pytest.MonkeyPatch.context() as mp:
        mp.setattr(ts, "_chunk_combine_kernel", Spy())
        check(args, softplus=True, rev=rev, dtype=torch.float32)
    assert set(seen) == {steps}


@pytest.mark.parametrize("ckpt,bd_bwd,rev", [(8, 4, False), (8, 8, True), (4, 4, False), (4, 2, True)])
def test_backward_blockings(ckpt, bd_bwd, rev):
    """Other backward blockings (checkpoint spacing: 2, 4 sub-blocks of 2 recomputed into
    registers; channels a program) give the same gradients, including partial blocks at
    the segment end."""
    with ts.use_tuning(ckpt=ckpt, block_d_bwd=bd_bwd):
        args = make(2, 29, 8, 4, 2, torch.float32, seed=31 + ckpt + bd_bwd)
        check(args, softplus=True, rev=rev, dtype=torch.float32)


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("rev", [False, True])
def test_backward_in_segment_groups(groups, rev):
    """A backward checkpoint bound smaller than the whole sequence's checkpoints: the
    backward runs over groups of `groups` segments (the last one partial: 3 segments),
    each group's checkpoints then its gradients, with the same results."""
    b, L, D, N = 2, 37, 8, 4
    F = ts.tuning().ckpt
    # 16: the fixture's segment; fwd 0: the backward computes its checkpoints itself
    with ts.BUDGET.bounded(fwd=0, bwd=groups * b * (16 // F) * N * D * 4):
        args = make(b, L, D, N, 2, torch.float32, seed=41 + groups)
        check(args, softplus=True, rev=rev, dtype=torch.float32)


def _saved_ckpt(y):
    """The checkpoint buffer the forward saved for the backward (None: not saved)."""
    return y.grad_fn.saved_tensors[-1]


@pytest.mark.parametrize("rev", [False, True])
def test_backward_checkpoints_from_forward(rev):
    """The forward writes the backward's checkpoints when gradients are to come, while the
    buffers alive on the device stay within the budget's fwd bound; the gradients equal
    those of the backward's own checkpoint pass (and the reference); the backward runs with
    its forward's tuning even when another one is active by then."""
    # on a GPU a shape the Gluon backward takes (32-channel blocks, segments of 128)
    b, L, D, N, G = (2, 37, 8, 4, 2) if DEV == "cpu" else (2, 300, 64, 16, 1)
    args = make(b, L, D, N, G, torch.float32, seed=45 + rev)
    u, delta, A, B, C, Dv, z, bias, h = args
    tu = ts.tuning()
    geom = ts._Geom(u, A, B, tu)
    live0 = ts.BUDGET.live(u.device)
    y, hT = ts.selective_scan_triton(u, delta, A, B, C, Dv, z, bias, True, h, True, rev)
    ck = _saved_ckpt(y)
    assert ck is not None and ck.shape[0] == b and ck.shape[2:] == (N, D)
    CK = geom.NS * geom.SEG // ck.shape[1]
    assert CK == (tu.ckpt if DEV == "cpu" else tu.fwd_fine)  # the Triton backward / the Gluon one
    size = ck.numel() * 4
    assert ts.BUDGET.live(u.device) == live0 + size
    y2, hT2 = ts.selective_scan_triton(u, delta, A, B, C, Dv, z, bias, True, h, True, rev)
    assert _saved_ckpt(y2) is not None and ts.BUDGET.live(u.device) == live0 + 2 * size
    del y, hT, y2, hT2, ck  # freed with their graphs: no longer counted
    assert ts.BUDGET.live(u.device) == live0
    with ts.BUDGET.bounded(fwd=live0 + size - 1):
        y, hT = ts.selective_scan_triton(u, delta, A, B, C, Dv, z, bias, True, h, True, rev)
    ck = _saved_ckpt(y)
    if DEV == "cpu":  # no other spacing: none saved
        assert ck is None
    else:  # the sparser bwd_fine fits
        assert ck is not None and geom.NS * geom.SEG // ck.shape[1] == tu.bwd_fine
    del y, hT, ck
    assert ts._fwd_ckpt(geom, u, A, B, False) == (None, 0)  # no gradient to come: nothing allocated
    g = torch.Generator().manual_seed(7)
    gy = torch.randn(b, L, D, generator=g).to(DEV)
    gh = torch.randn(b, D, N, generator=g).to(DEV)
    with ts.BUDGET.bounded(fwd=0):
        _, _, g_re = run(ts.selective_scan_triton, args, True, rev, gy, gh)
    _, _, g_fw = run(ts.selective_scan_triton, args, True, rev, gy, gh)
    for name, a, c in zip(NAMES, g_fw, g_re):
        assert rel(a, c) < 1e-5, name
    y, hT = ts.selective_scan_triton(u, delta, A, B, C, Dv, z, bias, True, h, True, rev)
    assert _saved_ckpt(y) is not None
    with ts.use_tuning(ckpt=4, bwd_fine=0, seg=8):  # another tuning by the backward: not used
        g_mis = torch.autograd.grad((y.float() * gy).sum() + (hT * gh).sum(), [t for t in args if t is not None])
    for name, a, c in zip(NAMES, g_mis, g_re):
        assert rel(a, c) < 1e-5, name
    check(args, softplus=True, rev=rev, dtype=torch.float32)


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode", "grad"])
def test_no_states_kept_without_a_backward_to_come(mode, monkeypatch):
    """Under no_grad / inference_mode (an inference, or the first forward of a chunked
    block that its backward recomputes) the forwards keep no checkpoints and no pre-gate
    sum, though D and the bias are parameters (``ctx.needs_input_grad`` says True for
    them there); with grad mode on they do, and the outputs are the same."""
    b, L, D, N, G = (2, 37, 8, 4, 2) if DEV == "cpu" else (2, 300, 64, 16, 1)
    u, delta, A, B, C, Dv, z, bias, _ = make(b, L, D, N, G, torch.float32, seed=9)
    Dp, bp = torch.nn.Parameter(Dv), torch.nn.Parameter(bias)
    asked = []
    real = ts._fwd_ckpt
    monkeypatch.setattr(ts, "_fwd_ckpt", lambda geom, u, A, B, grad, count=1: (
        asked.append((grad, count)), real(geom, u, A, B, grad, count))[1])
    ctx = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode,
           "grad": contextlib.nullcontext}[mode]
    with ctx():
        y = ts.selective_scan_triton(u, delta, A, B, C, Dp, z, bp, True)
        yb = ts.bidirectional_selective_scan_triton(u, delta, A, B, C, u, delta, A, B, C,
                                                    Dp, Dp, z, bp, bp, True)
    grad = mode == "grad"
    assert asked == [(grad, 1), (grad, 2)]
    if grad:
        assert _saved_ckpt(y) is not None
        assert yb.grad_fn.saved_tensors[19] is not None  # the pre-gate sum, for dz
    else:
        assert y.grad_fn is None and yb.grad_fn is None
    ref = selective_scan_ref(u, delta, A, B, C, Dv, z, bias, True)
    assert rel(y, ref) < TOL[torch.float32]



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
    with ts.BUDGET.bounded(fwd=0):
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


@pytest.mark.parametrize("D,N,G,small", [(40, 5, 1, True), (40, 4, 1, False), (96, 4, 1, False), (36, 3, 2, False)])
def test_d_inner_not_a_multiple_of_32(D, N, G, small):
    """d_inner 40, 96, 36 (channel blocks of 4 or 8, 32, 2: the largest power of two
    dividing a group, up to block_d), d_state 3-5 (combine lanes past N * D masked), under
    the small tuning (several segments) and the default one (one segment), and the
    single-step update (64-channel blocks, partly masked)."""
    with ts.use_tuning(None if small else ts.ScanTuning()):
        args = make(1, 37, D, N, G, torch.float32, seed=D + N)
        check(args, softplus=True, rev=D == 40, dtype=torch.float32)
        u, delta, A, B, C, Dv, z, bias, h = [t.detach() for t in args]
        y1, s1 = ts.selective_state_update_triton(h, u[:, 0], delta[:, 0], A, B[:, 0], C[:, 0], Dv, z[:, 0], bias, True)
        y2, s2 = selective_scan_ref(u[:, :1], delta[:, :1], A, B[:, :1], C[:, :1], Dv, z[:, :1], bias, True, h, True)
        assert rel(y1, y2[:, 0]) < 1e-5 and rel(s1, s2) < 1e-5


@pytest.mark.parametrize("rev", [False, True])
def test_d_state_32_through_triton(rev):
    """d_state 32 (the most the Gluon backward takes) through the Triton kernels, forward
    and backward, bf16."""
    args = make(1, 35, 8, 32, 1, torch.bfloat16, seed=32 + rev)
    check(args, softplus=True, rev=rev, dtype=torch.bfloat16)


def test_checkpoints_past_int32_offsets_within_a_segment():
    """The kernels offset a (batch, segment)'s checkpoints in int64 but a checkpoint within
    it in int32: one segment of 16384 positions x 16 states x 65536 channels spans 2^31
    elements at a spacing of 8 (checked on meta tensors: nothing allocated). There the
    forward writes no checkpoints (the backward's own pass, int64, makes them) and the
    Gluon backward is not taken; a lowered threshold runs that path here, with the same
    gradients."""
    meta = dict(device="meta", dtype=torch.bfloat16)
    u, A, B = torch.empty(1, 16384, 65536, **meta), torch.empty(65536, 16), torch.empty(1, 16384, 1, 16, **meta)
    geom = ts._Geom(u, A, B, ts.ScanTuning())  # 1024 programs: one segment
    assert geom.NS == 1 and not ts._fits_i32(geom, 8) and ts._fits_i32(geom, 16)
    assert ts._fwd_ckpt(geom, u, A, B, True) == (None, 0)  # (the Triton backward's spacing: 2)
    args = make(2, 37, 8, 4, 2, torch.float32, seed=47)
    u, delta, A, B, C, Dv, z, bias, h = args
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ts, "_I32", ts._Geom(u, A, B, ts.tuning()).SEG // 2 * 4 * 8)
        y = ts.selective_scan_triton(u, delta, A, B, C, Dv, z, bias, True, h, False, False)
        assert _saved_ckpt(y) is None
        check(args, softplus=True, rev=False, dtype=torch.float32)


def test_tuning_is_frozen_scoped_and_checked():
    t = ts.ScanTuning()
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.seg = 8
    for bad in ({"ckpt": 3}, {"ckpt": 0}, {"block_d": 48}, {"combine_tile": 100}):
        with pytest.raises(ValueError):
            ts.ScanTuning(**bad)
    outer = ts.tuning()
    with ts.use_tuning(seg=32) as tu:
        assert tu == ts.tuning() == dataclasses.replace(outer, seg=32)
        seen = []
        th = threading.Thread(target=lambda: seen.append(ts.tuning()))
        th.start()
        th.join()
        assert seen == [ts.ScanTuning()]  # another thread: the default
    assert ts.tuning() == outer


def test_saved_state_budget_per_device_and_thread_safe():
    from mambadna.kernels import scan_saved_state_limit
    from mambadna.kernels.scan.budget import SavedStateBudget

    bud = SavedStateBudget(fwd=1000, bwd=64)
    cpu, other = torch.device("cpu"), torch.device("cuda", 1)  # (a key only: nothing allocated)
    assert bud.reserve(other, 600) and not bud.reserve(other, 401) and bud.reserve(cpu, 1000)
    assert bud.live(other) == 600 and bud.live(cpu) == 1000
    with bud.bounded(fwd=10):
        assert bud.setting == (10, 64) and not bud.reserve(cpu, 1) and bud.bwd_bytes(cpu) == 64
    bud.release(other, 600)
    bud.release(cpu, 1000)
    assert bud.setting == (1000, 64) and bud.live(other) == 0 and bud.live(cpu) == 0
    with bud.bounded(fwd=None, bwd=1):
        assert bud.setting == (None, 1) and bud.fwd_bytes(cpu) == (8 << 30) // 8
    assert bud.setting == (1000, 64)

    # many threads reserving and releasing: never past the bound, nothing lost
    peak, lock = [0], threading.Lock()

    def work():
        for _ in range(300):
            if bud.reserve(cpu, 7):
                with lock:
                    peak[0] = max(peak[0], bud.live(cpu))
                bud.release(cpu, 7)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert bud.live(cpu) == 0 and 0 < peak[0] <= 1000
    # the public context manager sets the module's budget, restored on exit
    before = ts.BUDGET.setting
    with scan_saved_state_limit(123):
        assert ts.BUDGET.setting[0] == 123
    assert ts.BUDGET.setting == before


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
@pytest.mark.parametrize("variant", [{}, {"bwd": 1, "fwd": 0}, {"fwd": 0}, {"ckpt": 4},
                                     {"prefetch_bwd": 0}, {"prefetch_bwd": 3}, {"ckpt": 4, "prefetch_bwd": 2},
                                     {"bwd_fine": 0}, {"bwd_fine": 64}, {"bwd_fine": 16, "bwd": 1, "fwd": 0},
                                     {"bwd_fine": 32, "ckpt": 4, "prefetch_bwd": 0}])
def test_gpu_gluon_backward(shape, rev, variant):
    """The Gluon backward kernel against the reference: output and every gradient, both
    directions, with n_groups > 1 and d_state 8, for each variant (tuning fields; the
    saved-state budget's bounds "fwd"/"bwd": segment groups, checkpoints from the backward's
    own pass instead of the forward): checkpoint blocking, prefetch, states refined in
    shared memory from sparser checkpoints."""
    from mambadna.kernels.scan import gluon_bwd as gluon_scan_bwd

    if not gluon_scan_bwd.available():
        pytest.skip("this Triton has no Gluon")
    bounds = {k: variant[k] for k in ("fwd", "bwd") if k in variant}
    changes = {k: v for k, v in variant.items() if k not in bounds}
    b, D, N, G, L = shape
    args = make(b, L, D, N, G, torch.bfloat16, seed=62)
    with ts.use_tuning(**changes), ts.BUDGET.bounded(**bounds):
        check(args, softplus=True, rev=rev, dtype=torch.bfloat16)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,D,N,G,gluon", [(torch.float16, 64, 16, 1, True), (torch.bfloat16, 64, 32, 2, True),
                                               (torch.bfloat16, 96, 16, 1, True), (torch.bfloat16, 80, 16, 1, False),
                                               (torch.bfloat16, 64, 64, 1, False)])
@pytest.mark.parametrize("rev", [False, True])
def test_gpu_dtypes_states_and_widths(dtype, D, N, G, gluon, rev):
    """fp16 and d_state 32 through the Gluon backward, d_inner 96 (not a power of two: 32
    channels a backward block) and 80 (16-channel blocks: the Triton backward), d_state 64
    (the Triton backward), at a length of several segments."""
    from mambadna.kernels.scan import gluon_bwd as gluon_scan_bwd

    b, L = 2, 3001
    args = make(b, L, D, N, G, dtype, seed=63)
    geom = ts._Geom(args[0], args[2], args[3], ts.tuning(), bwd=True)
    assert ("FINE" in ts._bwd_kernel(geom)[3]) == (gluon and gluon_scan_bwd.available())
    check(args, softplus=True, rev=rev, dtype=dtype)
