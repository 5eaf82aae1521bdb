"""Fused depthwise conv + SiLU (Triton, run under TRITON_INTERPRET on CPU) against
its PyTorch reference: output and the gradients of x, weight, bias and context."""
import pytest
import torch

from mambadna.kernels import conv1d_silu, conv1d_silu_ref
from mambadna.kernels.conv import triton as tc


@pytest.fixture(autouse=True)
def _small_blocks():
    # 2 row tiles per backward program: L = 24 is 3 tiles on 2 programs (2 + 1), L = 13 ends
    # in a ragged tile
    with tc.use_tuning(block_l=8, block_d=4, warps=1, bwd_block_l=8, bwd_block_d=4, bwd_warps=1, bwd_tiles=2):
        yield


def _run(backend, x, w, b, c, rev, act, g):
    ins = [t.detach().clone().requires_grad_() if t is not None else None for t in (x, w, b, c)]
    y = conv1d_silu(ins[0], ins[1], ins[2], ins[3], reverse=rev, activation=act, backend=backend)
    y.backward(g)
    return [y] + [t.grad if t is not None else None for t in ins]


def _compare(b, L, D, K, rev, ctx, bias, act, seed):
    torch.manual_seed(seed)
    x = torch.randn(b, L, D)
    w = torch.randn(D, 1, K)
    bb = torch.randn(D) if bias else None
    c = torch.randn(b, K - 1, D) if ctx else None
    g = torch.randn(b, L, D)
    ref = _run("reference", x, w, bb, c, rev, act, g)
    out = _run("triton", x, w, bb, c, rev, act, g)
    for name, r, o in zip(("y", "dx", "dw", "dbias", "dcontext"), ref, out):
        if r is None:
            assert o is None, name
            continue
        torch.testing.assert_close(o, r, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("L", [1, 2, 13, 24])
@pytest.mark.parametrize("rev", [False, True])
@pytest.mark.parametrize("ctx", [False, True])
def test_matches_reference(L, rev, ctx):
    _compare(2, L, 6, 4, rev, ctx, bias=True, act=True, seed=L * 4 + 2 * rev + ctx)


@pytest.mark.parametrize("L,bl,tiles,rev,ctx,bias,act", [
    (37, 4, 3, False, True, True, True),   # 10 tiles on 4 programs (3+3+3+1), last tile 1 row
    (37, 4, 3, True, True, False, True),
    (22, 4, 4, True, False, True, False),  # 6 tiles on 2 programs (4+2), activation off
    (22, 4, 4, False, True, True, False),
    (29, 8, 1, False, False, True, True),  # one tile a program, 4 programs
    (37, 4, 0, True, True, True, True),    # auto: one wave of 16 programs (CPU: 1 SM) -> 3+3+3+1
    (3, 4, 2, False, True, True, True),    # L < K: one ragged tile, context on every row
    (3, 4, 2, True, True, True, False),
])
def test_backward_tiles_per_program(L, bl, tiles, rev, ctx, bias, act):
    """Backward programs streaming runs of several row tiles (dweight/dbias summed over them
    in registers, K-1 rows read past the run): ragged last tile, program count not dividing
    the tile count, L < K, activation off."""
    with tc.use_tuning(bwd_block_l=bl, bwd_tiles=tiles):
        _compare(2, L, 6, 4, rev, ctx, bias, act, seed=L + 10 * tiles + 2 * rev + ctx)


@pytest.mark.parametrize("K", [2, 3, 5])
def test_backward_other_widths(K):
    """d_conv other than 4 (windows of K-1 rows of x and of the gradient)."""
    with tc.use_tuning(bwd_block_l=4, bwd_tiles=3):
        _compare(1, 17, 5, K, K % 2 == 1, True, True, True, seed=K)


def test_no_bias_no_activation_bf16():
    torch.manual_seed(5)
    b, L, D, K = 1, 19, 5, 3
    x = torch.randn(b, L, D).bfloat16()
    w = torch.randn(D, K)
    g = torch.randn(b, L, D).bfloat16()
    ref = _run("reference", x.float(), w, None, None, False, False, g.float())
    out = _run("triton", x, w, None, None, False, False, g)
    assert out[0].dtype == torch.bfloat16 and out[3] is None
    torch.testing.assert_close(out[0].float(), ref[0], rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(out[1].float(), ref[1], rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(out[2], ref[2], rtol=2e-2, atol=5e-2)


def test_reverse_is_flipped_causal():
    """The reverse conv equals the causal conv of the flipped sequence, flipped back."""
    torch.manual_seed(7)
    x, w, bias = torch.randn(2, 11, 4), torch.randn(4, 4), torch.randn(4)
    y = conv1d_silu(x, w, bias, reverse=True, backend="triton")
    yf = conv1d_silu(x.flip(1), w, bias, backend="triton").flip(1)
    torch.testing.assert_close(y, yf)


def test_chunks_with_context_equal_whole():
    """Splitting the length and passing the K-1 adjacent inputs as context gives the
    whole-sequence output, both directions."""
    torch.manual_seed(9)
    x, w, bias = torch.randn(1, 20, 3), torch.randn(3, 4), torch.randn(3)
    for rev in (False, True):
        whole = conv1d_silu(x, w, bias, reverse=rev, backend="triton")
        k = 9
        if rev:
            a = conv1d_silu(x[:, :k], w, bias, context=x[:, k:k + 3], reverse=True, backend="triton")
            bb = conv1d_silu(x[:, k:], w, bias, reverse=True, backend="triton")
        else:
            a = conv1d_silu(x[:, :k], w, bias, backend="triton")
            bb = conv1d_silu(x[:, k:], w, bias, context=x[:, k - 3:k], backend="triton")
        torch.testing.assert_close(torch.cat([a, bb], 1), whole)


@pytest.mark.gpu
@pytest.mark.parametrize("rev", [False, True])
def test_gpu_bf16_matches_reference(rev):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    with tc.use_tuning(tc.ConvTuning()):  # the shipped blocking
        torch.manual_seed(3)
        b, L, D, K = 2, 4099, 192, 4
        x = torch.randn(b, L, D, device="cuda").bfloat16()
        w = torch.randn(D, 1, K, device="cuda") * 0.5
        bias = torch.randn(D, device="cuda")
        c = torch.randn(b, K - 1, D, device="cuda").bfloat16()
        g = torch.randn(b, L, D, device="cuda").bfloat16()
        ref = _run("reference", x.float(), w, bias, c.float(), rev, True, g.float())
        out = _run("triton", x, w, bias, c, rev, True, g)
        for name, r, o in zip(("y", "dx", "dw", "dbias", "dcontext"), ref, out):
            err = ((o.float() - r).norm() / r.norm()).item()
            assert err < 1e-2, (name, err)


def test_tuning_is_scoped_to_the_block_and_thread():
    import threading

    assert tc.tuning().block_l == 8  # the fixture's blocking
    with tc.use_tuning(block_l=16):
        assert tc._geom(torch.empty(1, 40, 4), tc.tuning())[0] == 16
    assert tc.tuning().block_l == 8
    seen = []
    t = threading.Thread(target=lambda: seen.append(tc.tuning()))
    t.start()
    t.join()
    assert seen == [tc.ConvTuning()]  # another thread launches with the shipped blocking
