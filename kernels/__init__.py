"""Selective-scan kernels for mambadna.

One entry point, :func:`selective_scan` (and beside it the fused bidirectional
scan, the single-step update, the depthwise conv :func:`conv1d_silu` and the
RMSNorm :func:`rms_norm`), dispatches between the fused Triton
kernels (CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1`` with
``backend="triton"``) and the pure-PyTorch reference (everything else).
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator, Optional

import torch

from .conv.reference import conv1d_silu_ref
from .norm.reference import rms_norm_ref
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
    "scan_saved_state_limit",
]

_BACKENDS = ("auto", "triton", "reference")


def triton_available() -> bool:
    """True when the Triton kernels can be imported (triton installed)."""
    try:
        from .scan import triton  # noqa: F401
    except Exception:  # pragma: no cover - depends on the platform
        return False
    return True


@contextlib.contextmanager
def scan_saved_state_limit(nbytes: Optional[int]) -> Iterator[None]:
    """Within the block, bound the fp32 states that Triton scans' forwards keep for
    their backwards (all such buffers alive at once) to ``nbytes``; 0 keeps none (each
    backward recomputes them: less memory, slower), None the default (1/8 of the device
    memory). The previous bound is restored on exit. No effect without Triton."""
    if not triton_available():
        yield
        return
    from .scan import triton as ts

    old = ts.CONFIG["fwd_ckpt_bytes"]
    ts.CONFIG["fwd_ckpt_bytes"] = None if nbytes is None else int(nbytes)
    try:
        yield
    finally:
        ts.CONFIG["fwd_ckpt_bytes"] = old


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
        backend: "auto" (Triton for CUDA tensors, reference otherwise),
            "triton" or "reference" (pure PyTorch, chunk-parallel
            :func:`selective_scan_chunked`, checked against the sequential
            :func:`selective_scan_ref`).

    Returns:
        y (batch, length, d_inner) in u's dtype, or (y, final_state).

    Memory (Triton): when gradients are to come, the forward also keeps fp32 states
    every 8 (or 16) positions for the backward, up to a bound on all such buffers
    alive (default 1/8 of the device memory; :func:`scan_saved_state_limit`).
    """
    if _pick(backend, u) == "triton":
        from .scan.triton import selective_scan_triton

        return selective_scan_triton(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                     initial_state, return_final_state, reverse)
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
    if _pick(backend, u_f) == "triton":
        from .scan.triton import bidirectional_selective_scan_triton

        return bidirectional_selective_scan_triton(
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
    if _pick(backend, u) == "triton":
        from .scan.triton import selective_state_update_triton

        return selective_state_update_triton(state, u, delta, A, B, C, D, z, delta_bias,
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
        backend: "auto" (Triton for CUDA tensors), "triton" or "reference".

    Returns:
        (batch, length, d_inner) in x's dtype; differentiable in x, weight, bias, context.
    """
    if _pick(backend, x) == "triton":
        from .conv.triton import conv1d_silu_triton

        return conv1d_silu_triton(x, weight, bias, context, reverse, activation)
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
        backend: "auto" (Triton for CUDA tensors), "triton" or "reference".

    Returns:
        (..., d) ``x * rsqrt(mean(x^2) + eps) * weight``; differentiable in x and
        weight, keeping only x and the per-row 1/rms (fp32) for backward.
    """
    if _pick(backend, x) == "triton":
        from .norm.triton import rms_norm_triton

        return rms_norm_triton(x, weight, eps, out_dtype)
    return rms_norm_ref(x, weight, eps, out_dtype)
