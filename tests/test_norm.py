"""Fused RMSNorm (Triton, run under TRITON_INTERPRET on CPU) against its PyTorch
reference: output, dx and dweight, every dtype, odd widths, ragged row counts."""
import pytest
import torch

from mambadna.kernels import rms_norm, rms_norm_ref
from mambadna.kernels.norm import triton as tn

TOL = {torch.float32: dict(atol=2e-5, rtol=2e-5), torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
       torch.float16: dict(atol=2e-3, rtol=2e-3)}


@pytest.fixture(autouse=True)
def _small_tiles():
    with tn.use_tuning(rows=64, warps=1, max_programs=3):  # several row blocks per program
        yield


def _run(backend, x, w, g, out_dtype=None):
    xi, wi = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    y = rms_norm(xi, wi, 1e-5, out_dtype, backend=backend)
    y.backward(g.to(y.dtype))
    return y, xi.grad, wi.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(1, 1, 8), (2, 37, 24), (3, 50, 40)])
def test_matches_reference(dtype, shape):
    torch.manual_seed(sum(shape))
    x = (3 * torch.randn(*shape)).to(dtype)
    w = torch.empty(shape[-1]).uniform_(0.5, 1.5)
    g = torch.randn(*shape)
    ref = _run("reference", x, w, g)
    out = _run("triton", x, w, g)
    for name, r, o in zip(("y", "dx", "dweight"), ref, out):
        assert o.dtype == r.dtype, name
        tol = TOL[dtype] if name != "dweight" else dict(atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(o.float(), r.float(), **tol, msg=name)


def test_out_dtype_is_the_cast_of_the_fp32_result():
    """fp32 input, bf16 output (what the model asks for under autocast): equal to the
    reference's fp32 output rounded to bf16; gradients in fp32."""
    torch.manual_seed(1)
    x = torch.randn(4, 33, 16)
    w = torch.empty(16).uniform_(0.5, 1.5)
    g = torch.randn(4, 33, 16)
    y32 = rms_norm_ref(x, w)
    y, dx, dw = _run("triton", x, w, g, torch.bfloat16)
    assert y.dtype == torch.bfloat16 and dx.dtype == torch.float32
    torch.testing.assert_close(y.float(), y32.to(torch.bfloat16).float(), atol=1e-2, rtol=1e-2)
    _, rdx, rdw = _run("reference", x, w, g, torch.bfloat16)
    torch.testing.assert_close(dx, rdx, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(dw, rdw, atol=1e-4, rtol=1e-4)


def test_strided_input_and_empty():
    torch.manual_seed(2)
    base = torch.randn(2, 20, 48)
    x = base[..., ::2]  # non-contiguous last dim
    w = torch.rand(24) + 0.5
    g = torch.randn(2, 20, 24)
    for r, o in zip(_run("reference", x, w, g), _run("triton", x, w, g)):
        torch.testing.assert_close(o, r, atol=2e-5, rtol=2e-5)
    e = torch.randn(0, 24)
    y, dx, dw = _run("triton", e, w, torch.randn(0, 24))
    assert y.shape == (0, 24) and dx.shape == (0, 24) and torch.equal(dw, torch.zeros(24))


@pytest.mark.gpu
def test_gpu_matches_reference():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    with tn.use_tuning(tn.NormTuning()):  # the shipped blocking
        torch.manual_seed(3)
        x = torch.randn(2, 4099, 256, device="cuda").to(torch.bfloat16)
        w = (torch.rand(256, device="cuda") + 0.5)
        g = torch.randn(2, 4099, 256, device="cuda")
        ref = _run("reference", x, w, g)
        out = _run("triton", x, w, g)
        for name, r, o in zip(("y", "dx", "dweight"), ref, out):
            tol = TOL[torch.bfloat16] if name != "dweight" else dict(atol=5e-2, rtol=1e-3)
            torch.testing.assert_close(o.float(), r.float(), **tol, msg=name)
