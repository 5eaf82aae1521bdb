"""The Mamba block: RMSNorm, the (Bi)Mamba mixer and the pre-norm residual step.

The selective scan is always called through :mod:`mambadna.kernels`; the model
never branches on the backend (Triton on CUDA, the PyTorch reference on CPU).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from mambadna.model.config import ModelConfig
from mambadna.kernels import (bidirectional_selective_scan, conv1d_silu, rms_norm, selective_scan,
                      selective_state_update)

Tensor = torch.Tensor


def _autocast_dtype(x: Tensor) -> Optional[torch.dtype]:
    """The autocast dtype for x's device when autocast is on there, else None."""
    dev = x.device.type
    try:
        on = torch.is_autocast_enabled(dev)
    except TypeError:  # torch < 2.4: no device argument
        on = torch.is_autocast_enabled() if dev == "cuda" else False
    if not on:
        return None
    return torch.get_autocast_dtype(dev) if hasattr(torch, "get_autocast_dtype") else torch.bfloat16


class RMSNorm(nn.Module):
    """RMSNorm over the last dimension, computed in fp32 (the fused Triton kernel on
    CUDA, :func:`mambadna.kernels.rms_norm_ref` elsewhere). For backward it keeps only
    its input and the per-row 1/rms.

    forward: x (..., d) -> (..., d) in ``out_dtype`` (default x's dtype).
    """

    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: Tensor, out_dtype: Optional[torch.dtype] = None) -> Tensor:
        return rms_norm(x, self.weight, self.eps, out_dtype)


class _Direction(nn.Module):
    """Per-direction parameters of a mixer: conv, x_proj, dt_proj, A_log, D."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d_inner, N, r, G = cfg.d_inner, cfg.d_state, cfg.dt_rank, cfg.n_groups
        self.conv = nn.Conv1d(d_inner, d_inner, cfg.d_conv, groups=d_inner, bias=cfg.conv_bias)
        self.x_proj = nn.Linear(d_inner, r + 2 * G * N, bias=False)
        self.dt_proj = nn.Linear(r, d_inner, bias=True)
        nn.init.uniform_(self.dt_proj.weight, -(r ** -0.5), r ** -0.5)
        dt = torch.exp(torch.rand(d_inner) * (math.log(cfg.dt_max) - math.log(cfg.dt_min))
                       + math.log(cfg.dt_min)).clamp(min=cfg.dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        A = torch.arange(1, N + 1, dtype=torch.float32).repeat(d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(d_inner))
        self.d_state, self.dt_rank, self.n_groups = N, r, G


class MambaMixer(nn.Module):
    """Mamba mixer; with ``bidirectional`` a BiMamba mixer (Caduceus) whose
    reverse direction shares the input and output projections.

    forward: h (batch, length, d) -> (batch, length, d).
    """

    def __init__(self, cfg: ModelConfig, bidirectional: bool):
        super().__init__()
        d, d_inner = cfg.mixer_width, cfg.d_inner
        self.cfg = cfg
        self.d_inner, self.d_conv = d_inner, cfg.d_conv
        self.bidirectional = bidirectional
        self.in_proj = nn.Linear(d, 2 * d_inner, bias=False)
        self.out_proj = nn.Linear(d_inner, d, bias=False)
        self.fwd = _Direction(cfg)
        self.rev = _Direction(cfg) if bidirectional else None

    # -- pieces -----------------------------------------------------------
    def _conv(self, x: Tensor, p: _Direction, reverse: bool, context: Optional[Tensor]):
        """Depthwise conv along length, channel-last x (b, L, d_inner).

        Causal direction: context = the k-1 inputs before x; reverse: the k-1
        inputs after x (zeros at the sequence ends). Returns (conv(x), context
        for the next chunk in scan order). The returned context is a copy, not
        a view: a view would keep the whole (b, L + k-1, d_inner) concatenation
        alive for as long as the caller keeps the context (chunked inference
        keeps one per chunk boundary).
        """
        k = self.d_conv
        y = conv1d_silu(x, p.conv.weight, p.conv.bias, context, reverse=reverse)
        # the k-1 inputs next to x in scan order, for the next chunk
        if x.shape[1] >= k - 1:
            new_ctx = (x[:, : k - 1] if reverse else x[:, x.shape[1] - (k - 1):]).clone()
            return y, new_ctx
        context = x.new_zeros(x.shape[0], k - 1, x.shape[2]) if context is None else context.to(x.dtype)
        if reverse:
            new_ctx = torch.cat([x, context], dim=1)[:, : k - 1].clone()
        else:
            new_ctx = torch.cat([context, x], dim=1)[:, x.shape[1]:].clone()
        return y, new_ctx

    def _in_proj(self, h: Tensor) -> Tuple[Tensor, Tensor]:
        """(x, z), each (b, L, d_inner) in its own storage: halves of one (b, L,
        2 d_inner) product would let the gate z, which the scan keeps for backward,
        keep the x half alive too."""
        W = self.in_proj.weight
        return F.linear(h, W[: self.d_inner]), F.linear(h, W[self.d_inner:])

    def _ssm_inputs(self, xc: Tensor, p: _Direction):
        b, L, _ = xc.shape
        x_dbl = p.x_proj(xc)
        r, GN = p.dt_rank, p.n_groups * p.d_state
        dt, B, C = torch.split(x_dbl, [r, GN, GN], dim=-1)
        delta = F.linear(dt, p.dt_proj.weight)  # bias goes to the kernel as delta_bias
        B = B.reshape(b, L, p.n_groups, p.d_state)
        C = C.reshape(b, L, p.n_groups, p.d_state)
        A = -torch.exp(p.A_log.float())
        return delta, A, B, C

    # -- whole sequence ---------------------------------------------------
    def forward(self, h: Tensor, project: bool = True) -> Tensor:
        """Normed h (batch, L, d) -> (batch, L, d); with ``project=False`` the
        gated (batch, L, d_inner) output before the output projection."""
        x, z = self._in_proj(h)
        xf, _ = self._conv(x, self.fwd, False, None)
        df, Af, Bf, Cf = self._ssm_inputs(xf, self.fwd)
        if not self.bidirectional:
            y = selective_scan(xf, df, Af, Bf, Cf, self.fwd.D.float(), z,
                               self.fwd.dt_proj.bias.float(), delta_softplus=True)
        else:
            xr, _ = self._conv(x, self.rev, True, None)
            dr, Ar, Br, Cr = self._ssm_inputs(xr, self.rev)
            y = bidirectional_selective_scan(
                xf, df, Af, Bf, Cf, xr, dr, Ar, Br, Cr,
                D_f=self.fwd.D.float(), D_r=self.rev.D.float(), z=z,
                delta_bias_f=self.fwd.dt_proj.bias.float(),
                delta_bias_r=self.rev.dt_proj.bias.float(), delta_softplus=True)
        return self.out_proj(y) if project else y

    # -- one direction over a chunk, with carried state -------------------
    def forward_direction(
        self,
        h: Tensor,
        reverse: bool = False,
        conv_context: Optional[Tensor] = None,
        ssm_state: Optional[Tensor] = None,
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """One direction of the mixer over a chunk, before the output projection.

        h: (batch, L, d) normed input chunk; conv_context: (batch, d_conv-1,
        d_inner) inputs adjacent to the chunk in scan order (None = sequence
        end); ssm_state: (batch, d_inner, d_state) fp32 carried state.
        Returns (y_gated (batch, L, d_inner), new conv_context, new ssm_state).
        Summing the directions' y_gated over all chunks and applying
        :meth:`project_out` equals :meth:`forward` exactly.
        """
        p = self.rev if reverse else self.fwd
        if p is None:
            raise ValueError("this mixer is causal: no reverse direction")
        x, z = self._in_proj(h)
        xc, ctx = self._conv(x, p, reverse, conv_context)
        delta, A, B, C = self._ssm_inputs(xc, p)
        if h.shape[1] == 1 and ssm_state is not None:
            y, state = selective_state_update(
                ssm_state, xc[:, 0], delta[:, 0], A, B[:, 0], C[:, 0], p.D.float(), z[:, 0],
                p.dt_proj.bias.float(), delta_softplus=True)
            return y.unsqueeze(1), ctx, state
        y, state = selective_scan(xc, delta, A, B, C, p.D.float(), z, p.dt_proj.bias.float(),
                                  delta_softplus=True, initial_state=ssm_state,
                                  return_final_state=True, reverse=reverse)
        return y, ctx, state

    def project_out(self, y: Tensor) -> Tensor:
        """(batch, L, d_inner) -> (batch, L, d)."""
        return self.out_proj(y)


class MambaBlock(nn.Module):
    """Pre-norm residual block: h + mixer(RMSNorm(h))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm = RMSNorm(cfg.mixer_width, cfg.norm_eps)
        self.mixer = MambaMixer(cfg, cfg.bidirectional)

    def forward(self, h: Tensor) -> Tensor:
        return self.residual(h, self.mixer(self.norm_in(h), project=False))

    # -- the block over a chunk with carried state (chunked training, inference) --
    def norm_in(self, h: Tensor) -> Tensor:
        """The pre-norm; writes the autocast dtype directly (the in_proj would cast to it anyway)."""
        return self.norm(h, _autocast_dtype(h))

    def direction(self, hn: Tensor, reverse: bool = False, conv_context: Optional[Tensor] = None,
                  ssm_state: Optional[Tensor] = None) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
        """One mixer direction over a chunk of the normed input hn (batch, L, d):
        (y_gated (batch, L, d_inner), conv context, SSM state) — see
        :meth:`MambaMixer.forward_direction`; the carried states own their storage."""
        y, ctx, state = self.mixer.forward_direction(hn, reverse, conv_context, ssm_state)
        return y, compact(ctx), compact(state)

    def residual(self, h: Tensor, y: Tensor) -> Tensor:
        """The residual step ``h + out_proj(y)``, y the sum of the directions' gated
        outputs: the one place that knows the block's residual form."""
        return h + self.mixer.project_out(y).to(h.dtype)

    def step(self, h: Tensor, conv_context: Optional[Tensor] = None,
             ssm_state: Optional[Tensor] = None) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
        """Causal block over a chunk of h (batch, L, d) with carried conv context and
        SSM state: (block output, conv context, SSM state) for the next chunk."""
        y, ctx, state = self.direction(self.norm_in(h), False, conv_context, ssm_state)
        return self.residual(h, y), ctx, state


def compact(t: Optional[Tensor]) -> Optional[Tensor]:
    """t, or a copy owning only its own elements when t is a view into a larger
    buffer: a carried conv context or SSM state kept across chunks must not keep
    the whole chunk-sized buffer it was sliced from alive."""
    if t is None or t.untyped_storage().nbytes() <= t.numel() * t.element_size():
        return t
    return t.clone()
