"""Exact length-chunked training of one Mamba block (bounded activation memory).

A block ``h + out_proj(y_fwd + y_rev)`` is evaluated chunk by chunk along the
length, carrying each direction's SSM state and conv context between chunks,
so only one chunk's activations exist at a time. Backward recomputes chunk by
chunk and carries the adjoints of the states and conv contexts the other way
(forward direction: last chunk to first; reverse direction: first to last).
Only the block input and the per-chunk boundary states are kept (all through
``save_for_backward``, so ``saved_tensors_hooks`` see them); the boundary
states are stored as compact copies, never as views into chunk-sized buffers.
The result and every gradient equal the unchunked block's (tested).

:func:`chunked_rows` does the same for a position-wise function (the final
norm and the LM head): it keeps only its input and recomputes block by block;
:func:`checkpointed` is the one-block case for any function (a whole block:
per-layer activation checkpointing).
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from mambadna.model.block import MambaBlock, compact


def _dir_order(n: int, reverse: bool):
    return range(n - 1, -1, -1) if reverse else range(n)


class _ChunkedBlock(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: torch.Tensor, block: MambaBlock, chunk: int, *params):
        mixer = block.mixer
        L = h.shape[1]
        bounds = [(s, min(s + chunk, L)) for s in range(0, L, chunk)]
        dirs = [False] + ([True] if mixer.bidirectional else [])
        boundary: List[torch.Tensor] = []
        # (rev, chunk) -> indices into ``boundary`` of the conv context and SSM state
        # entering that chunk in scan order (-1: sequence end, nothing carried)
        where: Dict[Tuple[bool, int], Tuple[int, int]] = {}

        def keep(t: Optional[torch.Tensor]) -> int:
            if t is None:
                return -1
            boundary.append(compact(t))
            return len(boundary) - 1

        with torch.no_grad():
            out = h.clone()
            for rev in dirs:
                conv_ctx, state = None, None
                for c in _dir_order(len(bounds), rev):
                    s, e = bounds[c]
                    where[(rev, c)] = (keep(conv_ctx), keep(state))
                    y, conv_ctx, state = block.direction(block.norm_in(h[:, s:e]), rev, conv_ctx, state)
                    out[:, s:e] = block.residual(out[:, s:e], y)
                    del y
        ctx.block, ctx.bounds, ctx.where, ctx.dirs = block, bounds, where, dirs
        ctx.device_type = h.device.type
        ctx.autocast = torch.is_autocast_enabled(h.device.type)
        ctx.autocast_dtype = torch.get_autocast_dtype(h.device.type)
        ctx.save_for_backward(h, *boundary)
        return out

    @staticmethod
    def backward(ctx, g_out: torch.Tensor):
        h, *boundary = ctx.saved_tensors
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
                i_conv, i_state = ctx.where[(rev, c)]
                conv_in = boundary[i_conv] if i_conv >= 0 else None
                state_in = boundary[i_state] if i_state >= 0 else None
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
                    y, conv_out, state_out = mixer.forward_direction(block.norm_in(hc), rev, conv_in, state_in)
                    o = mixer.project_out(y).to(g_out.dtype)
                    outs, grads = [o], [g_out[:, s:e]]
                    if g_conv is not None:
                        outs.append(conv_out)
                        grads.append(g_conv)
                    if g_state is not None:
                        outs.append(state_out)
                        grads.append(g_state)
                    res = torch.autograd.grad(outs, leaves + params, grads, allow_unused=True)
                    del y, conv_out, state_out, o, outs, grads  # this chunk's graph goes here
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
                del res, gl, gp, hc, leaves
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


class _ChunkedRows(torch.autograd.Function):
    """``fn`` (position-wise along dim 1) applied in blocks of ``chunk`` positions;
    only x is kept for backward, which recomputes one block at a time."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, fn: Callable, chunk: int, *params):
        L = x.shape[1]
        bounds = [(s, min(s + chunk, L)) for s in range(0, L, chunk)]
        out = None
        with torch.no_grad():
            for s, e in bounds:
                y = fn(x[:, s:e])
                if len(bounds) == 1:
                    out = y
                    break
                if out is None:
                    out = y.new_empty((y.shape[0], L) + tuple(y.shape[2:]))
                out[:, s:e] = y
                del y
        ctx.fn, ctx.bounds, ctx.params = fn, bounds, params
        ctx.device_type = x.device.type
        ctx.autocast = torch.is_autocast_enabled(x.device.type)
        ctx.autocast_dtype = torch.get_autocast_dtype(x.device.type)
        ctx.save_for_backward(x)
        return out

    @staticmethod
    def backward(ctx, g_out: torch.Tensor):
        (x,) = ctx.saved_tensors
        need_x = ctx.needs_input_grad[0]
        params = [p for p, need in zip(ctx.params, ctx.needs_input_grad[3:]) if need]
        whole = len(ctx.bounds) == 1  # (checkpointed: the gradient is the one block's, no copy)
        g_x = torch.empty_like(x) if need_x and not whole else None
        g_params: List[Optional[torch.Tensor]] = [None] * len(params)
        for s, e in ctx.bounds:
            with torch.enable_grad(), torch.autocast(ctx.device_type, dtype=ctx.autocast_dtype,
                                                     enabled=ctx.autocast):
                xb = x[:, s:e].detach().requires_grad_(need_x)
                leaves = ([xb] if need_x else []) + params
                # differentiate from y's gradient edge, y itself dropped first: the block's
                # output (the LM head's logits) is not kept through its own backward
                edge = torch.autograd.graph.get_gradient_edge(ctx.fn(xb))
                res = torch.autograd.grad([edge], leaves, [g_out[:, s:e]], allow_unused=True)
                del edge
            if need_x and whole:
                g_x = res[0]
            elif need_x:
                g_x[:, s:e] = res[0]
            for j, gp in enumerate(res[1:] if need_x else res):
                if gp is not None:
                    g_params[j] = gp if g_params[j] is None else g_params[j] + gp
            del res, xb, leaves
        it = iter(g_params)
        return (g_x, None, None, *[next(it) if need else None for need in ctx.needs_input_grad[3:]])


def chunked_rows(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, chunk: int,
                 params: Sequence[torch.Tensor]) -> torch.Tensor:
    """``fn(x)`` for a position-wise ``fn`` (output position t depends on input
    position t only, e.g. the final RMSNorm followed by the LM head), evaluated
    in blocks of ``chunk`` positions along dim 1. Only x is kept for backward
    (not fn's whole-length fp32 intermediates); backward recomputes one block
    at a time. ``params``: every parameter fn uses that needs a gradient."""
    if chunk <= 0 or x.shape[1] <= chunk:
        return fn(x)
    return _ChunkedRows.apply(x, fn, chunk, *params)


def checkpointed(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                 params: Sequence[torch.Tensor]) -> torch.Tensor:
    """``fn(x)`` keeping only x (batch, L, ...) for backward (activation checkpointing):
    the forward runs without grad, so the kernels keep nothing for a backward (the scan
    writes no checkpoints there); the backward recomputes ``fn(x)`` with grad and the
    forward's autocast, then differentiates it (the scan's states kept by that forward
    serve its backward at once). ``params``: every parameter fn uses that needs a
    gradient. fn need not be position-wise (one block of the whole length)."""
    if x.shape[1] == 0:
        return fn(x)
    return _ChunkedRows.apply(x, fn, x.shape[1], *params)
