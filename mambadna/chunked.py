"""Exact length-chunked training of one Mamba block (bounded activation memory).

A block ``h + out_proj(y_fwd + y_rev)`` is evaluated chunk by chunk along the
length, carrying each direction's SSM state and conv context between chunks,
so only one chunk's activations exist at a time. Backward recomputes chunk by
chunk and carries the adjoints of the states and conv contexts the other way
(forward direction: last chunk to first; reverse direction: first to last).
Only the block input and the per-chunk boundary states are kept. The result
and every gradient equal the unchunked block's (tested).
"""
from __future__ import annotations

from typing import List, Optional

import torch

from .model import MambaBlock


def _dir_order(n: int, reverse: bool):
    return range(n - 1, -1, -1) if reverse else range(n)


class _ChunkedBlock(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: torch.Tensor, block: MambaBlock, chunk: int, *params):
        mixer = block.mixer
        L = h.shape[1]
        bounds = [(s, min(s + chunk, L)) for s in range(0, L, chunk)]
        dirs = [False] + ([True] if mixer.bidirectional else [])
        saved = {}
        with torch.no_grad():
            out = h.clone()
            for rev in dirs:
                conv_ctx, state = None, None
                entry: List = [None] * len(bounds)
                for c in _dir_order(len(bounds), rev):
                    s, e = bounds[c]
                    entry[c] = (conv_ctx, state)
                    y, conv_ctx, state = mixer.forward_direction(block.norm(h[:, s:e]), rev, conv_ctx, state)
                    out[:, s:e] += mixer.project_out(y).to(out.dtype)
                saved[rev] = entry
        ctx.block, ctx.bounds, ctx.saved, ctx.dirs = block, bounds, saved, dirs
        ctx.device_type = h.device.type
        ctx.autocast = torch.is_autocast_enabled(h.device.type)
        ctx.autocast_dtype = torch.get_autocast_dtype(h.device.type)
        ctx.save_for_backward(h)
        return out

    @staticmethod
    def backward(ctx, g_out: torch.Tensor):
        (h,) = ctx.saved_tensors
        block, bounds = ctx.block, ctx.bounds
        mixer = block.mixer
        g_h = g_out.clone()
        params = [p for p in block.parameters() if p.requires_grad]
        g_params: List[Optional[torch.Tensor]] = [None] * len(params)
        for rev in ctx.dirs:
            g_state: Optional[torch.Tensor] = None
            g_conv: Optional[torch.Tensor] = None
            # adjoints flow opposite to the scan direction
            for c in _dir_order(len(bounds), not rev):
                s, e = bounds[c]
                conv_in, state_in = ctx.saved[rev][c]
                with torch.enable_grad(), torch.autocast(ctx.device_type, dtype=ctx.autocast_dtype,
                                                         enabled=ctx.autocast):
                    hc = h[:, s:e].detach().requires_grad_(True)
                    leaves = [hc]
                    if conv_in is not None:
                        conv_in = conv_in.detach().requires_grad_(True)
                        leaves.append(conv_in)
                    if state_in is not None:
                        state_in = state_in.detach().requires_grad_(True)
                        leaves.append(state_in)
                    y, conv_out, state_out = mixer.forward_direction(block.norm(hc), rev, conv_in, state_in)
                    o = mixer.project_out(y).to(g_out.dtype)
                    outs, grads = [o], [g_out[:, s:e]]
                    if g_conv is not None:
                        outs.append(conv_out)
                        grads.append(g_conv)
                    if g_state is not None:
                        outs.append(state_out)
                        grads.append(g_state)
                    res = torch.autograd.grad(outs, leaves + params, grads, allow_unused=True)
                gl, gp = res[: len(leaves)], res[len(leaves):]
                for j, gpar in enumerate(gp):
                    if gpar is not None:
                        g_params[j] = gpar if g_params[j] is None else g_params[j] + gpar
                g_h[:, s:e] += gl[0]
                i = 1
                g_conv = None
                if conv_in is not None:
                    g_conv = gl[i]
                    i += 1
                g_state = gl[i] if state_in is not None else None
        # parameter gradients go back through autograd (so DDP's hooks see them)
        return (g_h, None, None, *g_params)


def chunked_block(block: MambaBlock, h: torch.Tensor, chunk: int) -> torch.Tensor:
    """Apply ``block`` to h (batch, length, d) in length chunks of ``chunk``
    positions, exactly, with activation memory bounded by one chunk.

    Only h and the chunk-boundary states are kept for backward; autocast
    settings of the forward are restored for the recompute.
    """
    if chunk <= 0 or h.shape[1] <= chunk:
        return block(h)
    params = [p for p in block.parameters() if p.requires_grad]
    return _ChunkedBlock.apply(h, block, chunk, *params)
