"""Selective-scan kernels for mambadna.

One entry point, :func:`selective_scan` (and beside it the fused bidirectional
scan, the single-step update, the depthwise conv :func:`conv1d_silu` and the
RMSNorm :func:`rms_norm`), dispatches between the fused Triton
kernels (CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1`` with
``backend="triton"``), the compiled CPU scans (numba: :mod:`.scan.cpu` for CPU tensors
when no gradient is needed, :mod:`.scan.cpu_grad` with gradients: the scan without an
initial or final state, the conv) and the pure-PyTorch reference (everything else).
``MAMBADNA_SCAN_BACKEND=reference`` (or ``backend="reference"``) forces the reference.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator, Optional

import torch

from .conv.reference import conv1d_silu_ref
from .norm.reference import rms_norm_ref
from .tuning import needs_grad
from .scan.reference import (
    bidirectional_selective_scan_ref,
    selective_scan_chunked,
    selective_scan_ref,
    selective_state_update_ref,
)

__all__ = [
    "selective_scan",
    "bidirectional_selective_scan",
    "selective_state_update",
    "conv1d_silu",
    "conv1d_silu_ref",
    "rms_norm",
    "rms_norm_ref",
    "selective_scan_ref",
    "selective_scan_chunked",
    "bidirectional_selective_scan_ref",
    "selective_state_update_ref",
    "triton_available",
    "cpu_scan_available",
    "scan_saved_state_limit",
]

_BACKENDS = ("auto", "triton", "cpu", "reference")


def triton_available() -> bool:
    """True when the Triton kernels can be imported (triton installed)."""
    try:
        from .scan import triton  # noqa: F401
    except Exception:  # pragma: no cover - depends on the platform
        return False
    return True


def cpu_scan_available() -> bool:
    """True when the compiled CPU scan can run (numba installed)."""
    try:
        from .scan import cpu
    except Exception:  # pragma: no cover - depends on the platform
        return False
    return cpu.available()


def _pick_scan(backend: str, tensors, stateful: bool = False) -> str:
    """The scan backend: as :func:`_pick`, except that "auto" on CPU tensors in
    fp32/fp16/bf16 takes the compiled CPU scan when numba imports
    (``MAMBADNA_SCAN_BACKEND=reference`` keeps the reference): "cpu" when no gradient
    is needed, else "cpu_grad" (:mod:`.scan.cpu_grad`; not ``stateful``: an initial or
    final state keeps the reference). An explicit ``backend="cpu"`` is inference only:
    an error with a gradient to come."""
    b = _pick(backend, tensors[0])
    on_cpu = all(t is None or (t.device.type == "cpu" and t.dtype in _CPU_DTYPES) for t in tensors)
    if b == "cpu":
        if not on_cpu:
            raise ValueError('backend="cpu" needs fp32/fp16/bf16 CPU tensors')
        if needs_grad(*tensors):
            raise ValueError('backend="cpu" is inference only: no gradients flow through it')
        if not cpu_scan_available():
            raise RuntimeError('backend="cpu" needs numba (pip install numba)')
        return b
    if (backend == "auto" and b == "reference" and os.environ.get("MAMBADNA_SCAN_BACKEND") != "reference"
            and on_cpu and cpu_scan_available()):
        if not needs_grad(*tensors):
            return "cpu"
        if not stateful:
            return "cpu_grad"
    return b


_CPU_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@contextlib.contextmanager
def scan_saved_state_limit(nbytes: Optional[int]) -> Iterator[None]:
    """Within the block, bound the fp32 states that Triton scans' forwards keep for
    their backwards (all such buffers alive at once on a device) to ``nbytes``; 0 keeps
    none (each backward recomputes them: less memory, slower), None the default (1/8 of
    the device memory). The previous bound is restored on exit. The bound is the
    process's (:data:`.scan.budget.BUDGET`, thread-safe), not the calling thread's."""
    from .scan.budget import BUDGET

    with BUDGET.bounded(fwd=nbytes):
        yield


def _pick(backend: str, t: torch.Tensor) -> str:
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    if backend == "auto":
        env = os.environ.get("MAMBADNA_SCAN_BACKEND")
        if env in ("triton", "reference"):
            return env
        return "triton" if (t.is_cuda and triton_available()) else "reference"
    return backend


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    delta_bias: Optional[torch.Tensor] = None,
    delta_softplus: bool = False,
    initial_state: Optional[torch.Tensor] = None,
    return_final_state: bool = False,
    reverse: bool = False,
    backend: str = "auto",
):
    """Mamba-1 selective scan, channel-last.

    Args:
        u, delta: (batch, length, d_inner), fp32/fp16/bf16.
        A: (d_inner, d_state) fp32 (negative real parts).
        B, C: (batch, length, n_groups, d_state).
        D, delta_bias: (d_inner,) or None.
        z: (batch, length, d_inner) gate or None (y * silu(z)).
        delta_softplus: apply softplus to delta + delta_bias.
        initial_state: (batch, d_inner, d_state); with ``reverse`` it is the
            state after the last position.
        return_final_state: also return the final state (batch, d_inner, d_state) fp32.
        reverse: scan from the last position to the first.
        backend: "auto" (Triton for CUDA tensors; for CPU tensors the compiled scan
            when no gradient is needed and numba imports, else the reference),
            "triton", "cpu" (:func:`.scan.cpu.selective_scan_cpu`, inference only) or
            "reference" (pure PyTorch, chunk-parallel
            :func:`selective_scan_chunked`, checked against the sequential
            :func:`selective_scan_ref`).

    Returns:
        y (batch, length, d_inner) in u's dtype, or (y, final_state).

    Memory (Triton): when gradients are to come, the forward also keeps fp32 states
    every 8 (or 16) positions for the backward, up to a bound on all such buffers
    alive (default 1/8 of the device memory; :func:`scan_saved_state_limit`).
    """
    which = _pick_scan(backend, (u, delta, A, B, C, D, z, delta_bias, initial_state),
                       stateful=initial_state is not None or return_final_state)
    if which == "triton":
        from .scan.triton import selective_scan_triton

        return selective_scan_triton(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                     initial_state, return_final_state, reverse)
    if which == "cpu":
        from .scan.cpu import selective_scan_cpu

        return selective_scan_cpu(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                  initial_state, return_final_state, reverse)
    if which == "cpu_grad":
        from .scan.cpu_grad import selective_scan_cpu_grad

        return selective_scan_cpu_grad(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse)
    return selective_scan_chunked(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                  initial_state, return_final_state, reverse)


def bidirectional_selective_scan(
    u_f, delta_f, A_f, B_f, C_f,
    u_r, delta_r, A_r, B_r, C_r,
    D_f=None, D_r=None, z=None, delta_bias_f=None, delta_bias_r=None,
    delta_softplus: bool = False,
    backend: str = "auto",
):
    """Fused BiMamba scan: forward scan of (u_f, ...) plus reverse scan of (u_r, ...).

    u_*, delta_*, z: (batch, length, d_inner); A_*: (d_inner, d_state);
    B_*, C_*: (batch, length, n_groups, d_state); D_*, delta_bias_*: (d_inner,).
    Returns y = g(scan_fwd) + g(scan_rev), g = silu(z) gate when z is given,
    shape (batch, length, d_inner) in u_f's dtype. No flipped copies are made
    on the Triton path; there, with z and a gradient to come, the pre-gate sum
    (batch, length, d_inner), in u_f's dtype, is kept for the backward's dz.
    """
    which = _pick_scan(backend, (u_f, delta_f, A_f, B_f, C_f, u_r, delta_r, A_r, B_r, C_r,
                                 D_f, D_r, z, delta_bias_f, delta_bias_r))
    if which == "triton":
        from .scan.triton import bidirectional_selective_scan_triton

        return bidirectional_selective_scan_triton(
            u_f, delta_f, A_f, B_f, C_f, u_r, delta_r, A_r, B_r, C_r,
            D_f, D_r, z, delta_bias_f, delta_bias_r, delta_softplus)
    if which == "cpu":
        from .scan.cpu import bidirectional_selective_scan_cpu

        return bidirectional_selective_scan_cpu(
            u_f, delta_f, A_f, B_f, C_f, u_r, delta_r, A_r, B_r, C_r,
            D_f, D_r, z, delta_bias_f, delta_bias_r, delta_softplus)
    if which == "cpu_grad":
        from .scan.cpu_grad import bidirectional_selective_scan_cpu_grad

        return bidirectional_selective_scan_cpu_grad(
            u_f, delta_f, A_f, B_f, C_f, u_r, delta_r, A_r, B_r, C_r,
            D_f, D_r, z, delta_bias_f, delta_bias_r, delta_softplus)
    yf = selective_scan_chunked(u_f, delta_f, A_f, B_f, C_f, D_f, z, delta_bias_f, delta_softplus)
    yr = selective_scan_chunked(u_r, delta_r, A_r, B_r, C_r, D_r, z, delta_bias_r, delta_softplus,
                                reverse=True)
    if u_f.dtype == torch.float64:
        return yf + yr
    return (yf.float() + yr.float()).to(u_f.dtype)


def selective_state_update(
    state, u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
    backend: str = "auto",
):
    """Single-token recurrent update for constant-memory inference.

    state: (batch, d_inner, d_state) fp32; u, delta, z: (batch, d_inner);
    B, C: (batch, n_groups, d_state); A: (d_inner, d_state); D, delta_bias: (d_inner,).
    Returns (y (batch, d_inner), new_state (batch, d_inner, d_state) fp32).
    """
    which = _pick_scan(backend, (u, state, delta, A, B, C, D, z, delta_bias))
    if which == "triton":
        from .scan.triton import selective_state_update_triton

        return selective_state_update_triton(state, u, delta, A, B, C, D, z, delta_bias,
                                             delta_softplus)
    if which == "cpu":
        from .scan.cpu import selective_state_update_cpu

        return selective_state_update_cpu(state, u, delta, A, B, C, D, z, delta_bias,
                                          delta_softplus)
    return selective_state_update_ref(state, u, delta, A, B, C, D, z, delta_bias, delta_softplus)


def conv1d_silu(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    context: Optional[torch.Tensor] = None,
    reverse: bool = False,
    activation: bool = True,
    backend: str = "auto",
) -> torch.Tensor:
    """Depthwise convolution along the length followed by SiLU (Mamba's conv), channel-last.

    Args:
        x: (batch, length, d_inner).
        weight: (d_inner, d_conv) or (d_inner, 1, d_conv) (an ``nn.Conv1d`` weight).
        bias: (d_inner,) or None.
        context: (batch, d_conv - 1, d_inner): the inputs just before x (causal) or
            just after it (``reverse``), e.g. from the previous chunk; zeros when None.
        reverse: the anti-causal conv (position t sees t .. t + d_conv - 1), i.e. the
            causal conv of the flipped sequence, flipped back; no flip is made.
        activation: apply SiLU.
        backend: "auto" (Triton for CUDA tensors, the compiled CPU kernels for CPU
            tensors when numba imports: inference, or with gradients
            :mod:`.scan.cpu_grad`), "triton", "cpu" or "reference".

    Returns:
        (batch, length, d_inner) in x's dtype; differentiable in x, weight, bias, context.
    """
    which = _pick_scan(backend, (x, weight, bias, context))
    if which == "triton":
        from .conv.triton import conv1d_silu_triton

        return conv1d_silu_triton(x, weight, bias, context, reverse, activation)
    if which == "cpu":
        from .scan.cpu import conv1d_silu_cpu

        return conv1d_silu_cpu(x, weight, bias, context, reverse, activation)
    if which == "cpu_grad":
        from .scan.cpu_grad import conv1d_silu_cpu_grad

        return conv1d_silu_cpu_grad(x, weight, bias, context, reverse, activation)
    return conv1d_silu_ref(x, weight, bias, context, reverse, activation)


def rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float = 1e-5,
    out_dtype: Optional[torch.dtype] = None,
    backend: str = "auto",
) -> torch.Tensor:
    """RMSNorm over the last dimension, computed in fp32.

    Args:
        x: (..., d) any float dtype.
        weight: (d,).
        eps: added to the mean square.
        out_dtype: dtype of the output (default x's), e.g. the autocast dtype, so the
            layer after the norm needs no cast.
        backend: "auto" (Triton for CUDA tensors, the compiled CPU kernel for CPU
            tensors without a gradient to come when numba imports), "triton", "cpu" or
            "reference".

    Returns:
        (..., d) ``x * rsqrt(mean(x^2) + eps) * weight``; differentiable in x and
        weight, keeping only x and the per-row 1/rms (fp32) for backward.
    """
    which = _pick_scan(backend, (x, weight))
    if which == "triton":
        from .norm.triton import rms_norm_triton

        return rms_norm_triton(x, weight, eps, out_dtype)
    if which == "cpu":
        from .scan.cpu import rms_norm_cpu

        return rms_norm_cpu(x, weight, eps, out_dtype)
    return rms_norm_ref(x, weight, eps, out_dtype)
