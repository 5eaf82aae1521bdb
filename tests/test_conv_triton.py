"""Fused depthwise conv + SiLU (Triton, run under TRITON_INTERPRET on CPU) against
its PyTorch reference: output and the gradients of x, weight, bias and context."""
import pytest
import torch

from mambadna.kernels import conv1d_silu, conv1d_silu_ref
from mambadna.kernels import triton_conv as tc


@pytest.fixture(autouse=True)
def _small_blocks():
    old = dict(tc.CONFIG)
    tc.CONFIG.update(block_l=8, block_d=4, warps=1)
    yield
    tc.CONFIG.clear()
    tc.CONFIG.update(old)


def _run(backend, x, w, b, c, rev, act, g):
    ins = [t.detach().clone().requires_grad_() if t is not None else None for t in (x, w, b, c)]
    y = conv1d_silu(ins[0], ins[1], ins[2], ins[3], reverse=rev, activation=act, backend=backend)
    y.backward(g)
    return [y] + [t.grad if t is not None else None for t in ins]


@pytest.mark.parametrize("L", [1, 2, 13, 24])
@pytest.mark.parametrize("rev", [False, True])
@pytest.mark.parametrize("ctx", [False, True])
def test_matches_reference(L, rev, ctx):
    torch.manual_seed(L * 4 + 2 * rev + ctx)
    b, D, K = 2, 6, 4
    x = torch.randn(b, L, D)
    w = torch.randn(D, 1, K)
    bias = torch.randn(D)
    c = torch.randn(b, K - 1, D) if ctx else None
    g = torch.randn(b, L, D)
    ref = _run("reference", x, w, bias, c, rev, True, g)
    out = _run("triton", x, w, bias, c, rev, True, g)
    for name, r, o in zip(("y", "dx", "dw", "dbias", "dcontext"), ref, out):
        if r is None:
            assert o is None
            continue
        torch.testing.assert_close(o, r, rtol=1e-4, atol=1e-5, msg=name)


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
    tc.CONFIG.update(block_l=32, block_d=64, warps=4)
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
