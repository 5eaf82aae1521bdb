"""Readable pure-PyTorch reference of the Mamba-1 selective scan (S6).

Runs on any device (CPU included). State and accumulation are fp32; outputs come
back in the dtype of ``u``. This is the ground truth the Triton kernels are
tested against, and the CPU path of :func:`mambadna.kernels.selective_scan`.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from ..tuning import needs_grad

Tensor = torch.Tensor


def _compute_dtype(u: Tensor) -> torch.dtype:
    """fp32 state and accumulation (fp64 when the inputs are fp64, for gradcheck)."""
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def _discretize(u: Tensor, delta: Tensor, delta_bias: Optional[Tensor], softplus: bool):
    """(compute dtype, u, Δ = softplus(delta + delta_bias)) in the compute dtype."""
    cdt = _compute_dtype(u)
    dt = delta.to(cdt)
    if delta_bias is not None:
        dt = dt + delta_bias.to(cdt)
    if softplus:
        dt = F.softplus(dt)
    return cdt, u.to(cdt), dt


def _expand_groups(X: Tensor, d_inner: int) -> Tensor:
    """(batch, length, n_groups, d_state) -> (batch, length, d_inner, d_state)."""
    g = X.shape[2]
    if d_inner % g != 0:
        raise ValueError(f"d_inner={d_inner} is not divisible by n_groups={g}")
    return X.repeat_interleave(d_inner // g, dim=2)


def selective_scan_ref(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Optional[Tensor] = None,
    z: Optional[Tensor] = None,
    delta_bias: Optional[Tensor] = None,
    delta_softplus: bool = False,
    initial_state: Optional[Tensor] = None,
    return_final_state: bool = False,
    reverse: bool = False,
):
    """Sequential selective scan.

    u, delta, z: (batch, length, d_inner); A: (d_inner, d_state);
    B, C: (batch, length, n_groups, d_state); D, delta_bias: (d_inner,);
    initial_state: (batch, d_inner, d_state) fp32 -- with ``reverse`` the state
    *after* the last position. Returns y (batch, length, d_inner) in u's dtype,
    and the final state (batch, d_inner, d_state) fp32 if ``return_final_state``.

    Differentiable in every tensor argument (autograd through the loop).
    """
    if reverse:
        flip = lambda t: None if t is None else t.flip(1)  # noqa: E731
        out = selective_scan_ref(flip(u), flip(delta), A, flip(B), flip(C), D, flip(z),
                                 delta_bias, delta_softplus, initial_state, True, False)
        y, h = out
        y = y.flip(1)
        return (y, h) if return_final_state else y

    dtype_in = u.dtype
    cdt, uf, dt = _discretize(u, delta, delta_bias, delta_softplus)
    batch, length, d_inner = u.shape
    d_state = A.shape[-1]
    Bf = _expand_groups(B.to(cdt), d_inner)
    Cf = _expand_groups(C.to(cdt), d_inner)
    dA = torch.exp(dt.unsqueeze(-1) * A.to(cdt))            # (b, l, d, n)
    dBu = (dt * uf).unsqueeze(-1) * Bf                       # (b, l, d, n)
    if initial_state is None:
        h = u.new_zeros(batch, d_inner, d_state, dtype=cdt)
    else:
        h = initial_state.to(cdt)
    hs = []
    # unbind once: indexing inside the loop would cost a full-size zero fill per step in backward
    for dA_t, dBu_t in zip(dA.unbind(1), dBu.unbind(1)):
        h = dA_t * h + dBu_t
        hs.append(h)
    if length:
        H = torch.stack(hs, dim=1)                           # (b, l, d, n)
        y = (H * Cf).sum(-1)
    else:
        y = uf.clone()
    if D is not None:
        y = y + uf * D.to(cdt)
    if z is not None:
        y = y * F.silu(z.to(cdt))
    y = y.to(dtype_in)
    return (y, h) if return_final_state else y


def selective_state_update_ref(
    state: Tensor,
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Optional[Tensor] = None,
    z: Optional[Tensor] = None,
    delta_bias: Optional[Tensor] = None,
    delta_softplus: bool = False,
):
    """One recurrent step.

    state: (batch, d_inner, d_state) fp32; u, delta, z: (batch, d_inner);
    B, C: (batch, n_groups, d_state). Returns (y (batch, d_inner), new_state).
    """
    y, h = selective_scan_ref(
        u.unsqueeze(1), delta.unsqueeze(1), A, B.unsqueeze(1), C.unsqueeze(1), D,
        None if z is None else z.unsqueeze(1), delta_bias, delta_softplus, state, True)
    return y[:, 0], h


def bidirectional_selective_scan_ref(
    u_f, delta_f, A_f, B_f, C_f,
    u_r, delta_r, A_r, B_r, C_r,
    D_f=None, D_r=None, z=None, delta_bias_f=None, delta_bias_r=None,
    delta_softplus=False,
):
    """Forward scan with one parameter set plus reverse scan with the other, summed.

    y = gate(scan(u_f,...)) + gate(scan_reverse(u_r,...)), gate = silu(z) if z given.
    Shapes as in :func:`selective_scan_ref`; returns y (batch, length, d_inner).
    """
    yf = selective_scan_ref(u_f, delta_f, A_f, B_f, C_f, D_f, z, delta_bias_f, delta_softplus)
    yr = selective_scan_ref(u_r, delta_r, A_r, B_r, C_r, D_r, z, delta_bias_r, delta_softplus,
                            reverse=True)
    return (yf.float() + yr.float()).to(u_f.dtype) if u_f.dtype != torch.float64 else yf + yr


def selective_scan_chunked(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Optional[Tensor] = None,
    z: Optional[Tensor] = None,
    delta_bias: Optional[Tensor] = None,
    delta_softplus: bool = False,
    initial_state: Optional[Tensor] = None,
    return_final_state: bool = False,
    reverse: bool = False,
    chunk: int = 0,
):
    """Same function as :func:`selective_scan_ref`, evaluated chunk-parallel in
    pure PyTorch (the CPU path of ``selective_scan``).

    The length is cut into chunks of ``chunk`` positions (0 = about sqrt(L));
    all chunks run their local recurrence from a zero state at once, then the
    chunk states are carried across chunks, then applied:
    h_t = h_t^local + exp(cum_t) * h_in(chunk), with cum_t the within-chunk
    cumulative log decay (non-positive, so exp never overflows). The tail is
    padded with decay 1 (log 0) and input 0. Python-level steps: chunk + L/chunk
    instead of L. Shapes as in :func:`selective_scan_ref`.
    """
    if reverse:
        flip = lambda t: None if t is None else t.flip(1)  # noqa: E731
        y, h = selective_scan_chunked(flip(u), flip(delta), A, flip(B), flip(C), D, flip(z), delta_bias,
                                      delta_softplus, initial_state, True, False, chunk)
        return (y.flip(1), h) if return_final_state else y.flip(1)
    dtype_in = u.dtype
    cdt, uf, dt = _discretize(u, delta, delta_bias, delta_softplus)
    b, L, d = u.shape
    n = A.shape[-1]
    h0 = u.new_zeros(b, d, n, dtype=cdt) if initial_state is None else initial_state.to(cdt)
    if L == 0:
        y = uf * (D.to(cdt) if D is not None else 0)
        return (y.to(dtype_in), h0) if return_final_state else y.to(dtype_in)
    T = chunk if chunk > 0 else max(1, int(math.ceil(math.sqrt(L))))
    nc = (L + T - 1) // T
    pad = nc * T - L
    if not needs_grad(u, delta, A, B, C, D, z, delta_bias, initial_state):
        y, hT = _chunked_inference(uf, dt, A.to(cdt), B.to(cdt), C.to(cdt), h0, T, nc, pad)
        if D is not None:
            y = y + uf * D.to(cdt)
        if z is not None:
            y = y * F.silu(z.to(cdt))
        y = y.to(dtype_in)
        return (y, hT) if return_final_state else y
    logdA = dt.unsqueeze(-1) * A.to(cdt)                      # (b, L, d, n), <= 0
    dBu = (dt * uf).unsqueeze(-1) * _expand_groups(B.to(cdt), d)
    if pad:
        logdA = F.pad(logdA, (0, 0, 0, 0, 0, pad))            # decay 1 on the padded tail
        dBu = F.pad(dBu, (0, 0, 0, 0, 0, pad))                # input 0 on the padded tail
    logdA = logdA.view(b, nc, T, d, n)
    dBu = dBu.view(b, nc, T, d, n)
    dA = torch.exp(logdA)
    h = torch.zeros(b, nc, d, n, dtype=cdt, device=u.device)
    local = []
    for dA_t, dBu_t in zip(dA.unbind(2), dBu.unbind(2)):     # all chunks at once
        h = dA_t * h + dBu_t
        local.append(h)
    Hloc = torch.stack(local, dim=2)                          # (b, nc, T, d, n)
    cum = torch.cumsum(logdA, dim=2)
    total = torch.exp(cum[:, :, -1])                          # (b, nc, d, n)
    carry = [h0]
    for tot_c, last_c in zip(total.unbind(1), local[-1].unbind(1)):  # across chunks
        carry.append(tot_c * carry[-1] + last_c)
    hin = torch.stack(carry[:-1], dim=1)                      # (b, nc, d, n)
    H = Hloc + torch.exp(cum) * hin.unsqueeze(2)
    H = H.reshape(b, nc * T, d, n)[:, :L]
    y = (H * _expand_groups(C.to(cdt), d)).sum(-1)
    if D is not None:
        y = y + uf * D.to(cdt)
    if z is not None:
        y = y * F.silu(z.to(cdt))
    y = y.to(dtype_in)
    return (y, carry[-1]) if return_final_state else y


def _chunked_inference(uf, dt, A, B, C, h0, T, nc, pad):
    """No-autograd chunked scan that never materialises (batch, L, d, n) tensors:
    pass 1 runs every chunk's local recurrence (all chunks at once) and keeps
    its output and final state; the chunk states are carried across chunks;
    pass 2 adds C_t . (prod of decays up to t) * h_in. Returns (y without D/z, hT)."""
    b, L, d = uf.shape
    n = A.shape[-1]
    g = B.shape[2]

    def chunked(x):  # (b, L, ...) -> (b, nc, T, ...), zero-padded tail (decay 1, input 0)
        if pad:
            x = F.pad(x, (0, 0) * (x.dim() - 2) + (0, pad))
        return x.view(b, nc, T, *x.shape[2:])

    dtc, duc = chunked(dt), chunked(dt * uf)
    Bc, Cc = chunked(B), chunked(C)
    rep = d // g

    def step_terms(t):
        dA = torch.exp(dtc[:, :, t, :, None] * A)                       # (b, nc, d, n)
        Bt = Bc[:, :, t].repeat_interleave(rep, dim=2)                  # (b, nc, d, n)
        Ct = Cc[:, :, t].repeat_interleave(rep, dim=2)
        return dA, Bt, Ct

    h = torch.zeros(b, nc, d, n, dtype=uf.dtype, device=uf.device)
    y = torch.empty(b, nc, T, d, dtype=uf.dtype, device=uf.device)
    for t in range(T):
        dA, Bt, Ct = step_terms(t)
        h = dA * h + duc[:, :, t, :, None] * Bt
        y[:, :, t] = (h * Ct).sum(-1)
    total = torch.exp(dtc.sum(2)[..., None] * A)                       # (b, nc, d, n) chunk decay
    hin = torch.empty_like(h)
    carry = h0
    for c in range(nc):
        hin[:, c] = carry
        carry = total[:, c] * carry + h[:, c]
    E = torch.ones_like(h)
    for t in range(T):
        dA, _, Ct = step_terms(t)
        E = E * dA
        y[:, :, t] += (E * hin * Ct).sum(-1)
    return y.view(b, nc * T, d)[:, :L], carry
