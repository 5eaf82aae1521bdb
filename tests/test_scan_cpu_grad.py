"""The compiled CPU training kernels (kernels/scan/cpu_grad.py) against the references
evaluated in fp64: the scan's output and the gradient of every input (u, delta, A, B, C,
D, z, delta_bias), one direction and bidirectional; the depthwise conv + SiLU's output and
the gradients of x, weight, bias and context; and a model's training step."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("numba")

from mambadna.kernels.scan import cpu_grad  # noqa: E402
from mambadna.kernels.scan.reference import bidirectional_selective_scan_ref, selective_scan_ref  # noqa: E402

NAMES = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]


def rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def make(b, L, d, N, G, seed, with_z=True, with_d=True, with_bias=True):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    t = dict(u=r(b, L, d), delta=0.5 * r(b, L, d) - 0.5, A=-(torch.rand(d, N, generator=g) * 3 + 0.1),
             B=r(b, L, G, N), C=r(b, L, G, N), D=r(d) if with_d else None, z=r(b, L, d) if with_z else None,
             delta_bias=0.5 * r(d) if with_bias else None)
    return t


def grads(fn, t, w, dtype):
    leaves = {k: (None if v is None else v.to(dtype).requires_grad_(True)) for k, v in t.items()}
    y = fn(leaves)
    used = [k for k in NAMES if leaves[k] is not None]
    gs = torch.autograd.grad((y.double() * w).sum(), [leaves[k] for k in used])
    return y, dict(zip(used, gs))


@pytest.mark.parametrize("b,L,d,N,G,rev,softplus,flags", [
    (2, 37, 24, 4, 1, False, True, (True, True, True)),
    (2, 37, 24, 4, 2, True, True, (True, True, True)),      # groups, reverse
    (1, 5, 8, 3, 1, False, False, (False, False, False)),   # shorter than one kept-state block
    (2, 16, 8, 4, 1, True, True, (True, False, True)),      # exactly one block
    (1, 50, 160, 16, 1, True, True, (False, True, False)),  # 2 channel blocks (128 + 32), 4 blocks along L
    (3, 33, 96, 8, 3, False, True, (True, True, True)),     # 3 groups of 32 channels
])
def test_scan_output_and_every_gradient(b, L, d, N, G, rev, softplus, flags):
    t = make(b, L, d, N, G, seed=L + d, with_z=flags[0], with_d=flags[1], with_bias=flags[2])
    w = torch.randn(b, L, d, generator=torch.Generator().manual_seed(1)).double()

    def run(fn):
        return lambda x: fn(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["delta_bias"],
                            softplus, reverse=rev)

    y, g = grads(run(cpu_grad.selective_scan_cpu_grad), t, w, torch.float32)
    yr, gr = grads(run(selective_scan_ref), t, w, torch.float64)
    assert y.dtype == torch.float32 and rel(y, yr) < 1e-5
    assert g.keys() == gr.keys()
    for k in g:
        assert rel(g[k], gr[k]) < 1e-5, k


def test_bidirectional_output_and_every_gradient():
    tf, tr = make(2, 29, 40, 6, 2, seed=3), make(2, 29, 40, 6, 2, seed=4)
    tr["z"] = tf["z"]  # one gate, on the sum
    w = torch.randn(2, 29, 40, generator=torch.Generator().manual_seed(2)).double()
    both = {**{f"{k}_f": v for k, v in tf.items()}, **{f"{k}_r": v for k, v in tr.items() if k != "z"}}

    def run(fn, dtype):
        leaves = {k: v.to(dtype).requires_grad_(True) for k, v in both.items()}
        x = lambda s: [leaves[f"{k}_{s}"] for k in ("u", "delta", "A", "B", "C")]  # noqa: E731
        y = fn(*x("f"), *x("r"), leaves["D_f"], leaves["D_r"], leaves["z_f"], leaves["delta_bias_f"],
               leaves["delta_bias_r"], True)
        return y, dict(zip(leaves, torch.autograd.grad((y.double() * w).sum(), list(leaves.values()))))

    y, g = run(cpu_grad.bidirectional_selective_scan_cpu_grad, torch.float32)
    yr, gr = run(bidirectional_selective_scan_ref, torch.float64)
    assert rel(y, yr) < 1e-5
    for k in gr:
        assert rel(g[k], gr[k]) < 1e-5, k


def test_bf16_inputs_come_back_in_bf16():
    t = make(1, 20, 16, 4, 1, seed=9)
    leaves = {k: v.bfloat16().requires_grad_(True) for k, v in t.items()}
    y = cpu_grad.selective_scan_cpu_grad(*(leaves[k] for k in NAMES), True)
    y.float().sum().backward()
    assert y.dtype == torch.bfloat16 and all(leaves[k].grad.dtype == torch.bfloat16 for k in NAMES)
    ref = selective_scan_ref(*(t[k].double() for k in NAMES), True)
    assert rel(y, ref) < 1e-2


def test_model_training_step_matches_the_reference_path(monkeypatch):
    """A small bidirectional model's loss and parameter gradients through the compiled
    training scan equal those through the reference within 1e-4."""
    from mambadna.model import MambaDNA, ModelConfig

    torch.manual_seed(0)
    model = MambaDNA(ModelConfig(d_model=32, n_layers=2, d_state=8, bidirectional=True))
    ids = torch.randint(7, 11, (3, 45))

    def step():
        model.zero_grad()
        loss = model(ids).float().logsumexp(-1).mean()
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    before, convs = cpu_grad.CALLS["scan"], cpu_grad.CALLS["conv"]
    loss, g = step()
    assert cpu_grad.CALLS["scan"] == before + 2  # one bidirectional scan a layer
    assert cpu_grad.CALLS["conv"] == convs + 4  # a conv a direction
    monkeypatch.setenv("MAMBADNA_SCAN_BACKEND", "reference")
    loss_r, g_r = step()
    assert cpu_grad.CALLS["scan"] == before + 2 and cpu_grad.CALLS["conv"] == convs + 4
    assert abs(float(loss - loss_r)) < 1e-5 and g.keys() == g_r.keys()
    for n in g:
        assert rel(g[n], g_r[n]) < 1e-4, n


@pytest.mark.parametrize("rev", [False, True])
@pytest.mark.parametrize("K,L,with_ctx,act", [
    (4, 37, True, True), (4, 37, False, True), (4, 9, True, False),
    (4, 2, True, True),   # shorter than the taps: every output reads the context
    (3, 1, False, True), (2, 5, True, True),
])
def test_conv_output_and_every_gradient(rev, K, L, with_ctx, act):
    from mambadna.kernels import conv1d_silu_ref

    g = torch.Generator().manual_seed(K * 100 + L)
    b, d = 3, 40
    t = [torch.randn(b, L, d, generator=g), torch.randn(d, 1, K, generator=g), torch.randn(d, generator=g)]
    if with_ctx:
        t.append(torch.randn(b, K - 1, d, generator=g))
    gy = torch.randn(b, L, d, generator=g, dtype=torch.float64)

    def run(fn, dtype):
        leaves = [v.to(dtype).requires_grad_(True) for v in t]
        y = fn(leaves[0], leaves[1], leaves[2], leaves[3] if with_ctx else None, rev, act)
        return y, torch.autograd.grad((y.double() * gy).sum(), leaves)

    y, gs = run(cpu_grad.conv1d_silu_cpu_grad, torch.float32)
    y_r, gs_r = run(conv1d_silu_ref, torch.float64)
    assert y.dtype == torch.float32 and rel(y, y_r) < 1e-6
    for name, a, r in zip(["x", "weight", "bias", "context"], gs, gs_r):
        assert a.shape == r.shape and rel(a, r) < 1e-5, name
