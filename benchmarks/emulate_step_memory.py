"""Predict the GPU peak memory of one training step (fwd+bwd) on the CPU.

The model runs on the CPU under bf16 autocast, with the Triton scan replaced by
a stand-in that allocates and keeps for backward exactly the tensors that
``kernels/triton_scan.py`` (v5 row-recurrent kernels: segment states every
``SEG`` = 128 positions kept for backward, fp32 states every ``CKPT`` = 8
positions transient in backward) does, with zeros for values. Heap bytes in
use (glibc ``mallinfo2``) are sampled after every aten op; the peak over the
step, minus the bytes in use before it, is reported, also scaled linearly to
``--scale-to`` tokens (every whole-length term is linear in L at a fixed
L / chunk ratio). Peaks are split by phase: forward, backward of the loss,
LM head and final norm, and backward of the blocks.

Checked against H100 ``torch.cuda.max_memory_allocated`` at 2^20 (16 x 256
bidirectional, chunk 131072; emulated at 2^16 with chunk 8192, x16), on the
model code the H100 ran (before the RMSNorm / final-norm / in_proj memory
fixes that came with this script): chunked + bf16 residual 14.03 vs 14.14 GiB,
per-layer checkpointing bf16 residual 35.17 vs 35.67 GiB, fp32 residual 42.67
vs 43.17 GiB. Update the stand-in when the kernel's saved or transient state
changes. Linux (glibc) only.

    OMP_NUM_THREADS=1 python benchmarks/emulate_step_memory.py --length 65536 --layers 16 \\
        --chunk 8192 --mode chunked --residual-bf16
"""
from __future__ import annotations

import argparse
import ctypes
import time

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import mambadna.model as mm
from mambadna.config import ModelConfig

SEG, CKPT = 128, 8


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]


_libc = ctypes.CDLL("libc.so.6")
_libc.mallinfo2.restype = _MallInfo2


def heap_in_use() -> int:
    mi = _libc.mallinfo2()
    return mi.uordblks + mi.hblkhd


class _Peak(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.phase = "fwd"
        self.by_phase = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        u = heap_in_use()
        if u > self.by_phase.get(self.phase, 0):
            self.by_phase[self.phase] = u
        return out


def _c(t):
    return None if t is None else (t if t.stride(-1) == 1 else t.contiguous())


def _nseg(L):
    return -(-L // SEG)


class _ScanStandIn(torch.autograd.Function):
    """Memory of kernels.triton_scan._ScanFn (one direction, carried state)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D_, z, bias, h0):
        u, delta, z, B, C = _c(u), _c(delta), _c(z), _c(B), _c(C)
        b, L, D = u.shape
        N = A.shape[1]
        hseg = torch.zeros(b, _nseg(L), N, D)
        out = torch.zeros(b, L, D, dtype=u.dtype)
        ctx.save_for_backward(u, delta, A, B, C, D_, z, bias, hseg)
        ctx.has_h0 = h0 is not None
        return out, torch.zeros(b, D, N)

    @staticmethod
    def backward(ctx, gout, ghT):
        u, delta, A, B, C, D_, z, bias, hseg = ctx.saved_tensors
        b, L, D = u.shape
        N = A.shape[1]
        gout = torch.zeros_like(u) if gout is None else _c(gout)
        du, ddelta, dz = torch.zeros_like(u), torch.zeros_like(delta), torch.zeros_like(z)
        dB, dC = torch.zeros(B.shape), torch.zeros(C.shape)
        mseg = torch.zeros(b, _nseg(L), N, D)
        hfine = torch.zeros(b, _nseg(L) * (SEG // CKPT), N, D)
        dA_part = torch.zeros(b, _nseg(L), N, D)
        del mseg, hfine
        return (du, ddelta, dA_part.sum((0, 1)).t().to(A.dtype), dB.to(B.dtype), dC.to(C.dtype),
                torch.zeros_like(D_), dz, torch.zeros_like(bias), torch.zeros(b, D, N) if ctx.has_h0 else None)


def _scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
          initial_state=None, return_final_state=False, reverse=False):
    y, hT = _ScanStandIn.apply(u, delta, A, B, C, D, z, delta_bias, initial_state)
    return (y, hT) if return_final_state else y


class _BidirStandIn(torch.autograd.Function):
    """Memory of kernels.triton_scan._BidirFn (both directions fused)."""

    @staticmethod
    def forward(ctx, uf, df, Af, Bf, Cf, ur, dr, Ar, Br, Cr, Df, Dr, z, bf, br):
        uf, df, Bf, Cf, z, ur, dr, Br, Cr = map(_c, (uf, df, Bf, Cf, z, ur, dr, Br, Cr))
        b, L, D = uf.shape
        N = Af.shape[1]
        hsf, hsr = torch.zeros(b, _nseg(L), N, D), torch.zeros(b, _nseg(L), N, D)
        out = torch.zeros(b, L, D, dtype=uf.dtype)
        acc = torch.zeros(b, L, D)
        del acc
        ctx.save_for_backward(uf, df, Af, Bf, Cf, ur, dr, Ar, Br, Cr, Df, Dr, z, bf, br, hsf, hsr)
        return out

    @staticmethod
    def backward(ctx, gout):
        (uf, df, Af, Bf, Cf, ur, dr, Ar, Br, Cr, Df, Dr, z, bf, br, hsf, hsr) = ctx.saved_tensors
        b, L, D = uf.shape
        N = Af.shape[1]
        gout = _c(gout)
        dz = torch.zeros(z.shape)
        grads = []
        for u, d, A, B, C in ((uf, df, Af, Bf, Cf), (ur, dr, Ar, Br, Cr)):
            du, dd = torch.zeros_like(u), torch.zeros_like(d)
            dB, dC = torch.zeros(B.shape), torch.zeros(C.shape)
            mseg = torch.zeros(b, _nseg(L), N, D)
            hfine = torch.zeros(b, _nseg(L) * (SEG // CKPT), N, D)
            del mseg, hfine
            grads.append((du, dd, torch.zeros_like(A), dB.to(B.dtype), dC.to(C.dtype)))
        (a1, a2, a3, a4, a5), (b1, b2, b3, b4, b5) = grads
        return (a1, a2, a3, a4, a5, b1, b2, b3, b4, b5, torch.zeros_like(Df), torch.zeros_like(Dr),
                dz.to(z.dtype), torch.zeros_like(bf), torch.zeros_like(br))


def _bidir(uf, df, Af, Bf, Cf, ur, dr, Ar, Br, Cr, D_f=None, D_r=None, z=None,
           delta_bias_f=None, delta_bias_r=None, delta_softplus=False):
    return _BidirStandIn.apply(uf, df, Af, Bf, Cf, ur, dr, Ar, Br, Cr, D_f, D_r, z, delta_bias_f, delta_bias_r)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--length", type=int, default=65536)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--chunk", type=int, default=8192)
    ap.add_argument("--mode", choices=("plain", "checkpoint", "chunked"), default="chunked")
    ap.add_argument("--residual-bf16", action="store_true")
    ap.add_argument("--scale-to", type=int, default=2**20, help="report peaks scaled to this length too")
    args = ap.parse_args()

    mm.selective_scan = _scan
    mm.bidirectional_selective_scan = _bidir
    torch.manual_seed(0)
    m = mm.MambaDNA(ModelConfig(d_model=args.d_model, n_layers=args.layers, bidirectional=True)).train()
    if args.mode == "chunked":
        m.layer_chunk = args.chunk
    elif args.mode == "checkpoint":
        m.gradient_checkpointing = True
    if args.residual_bf16:
        m.residual_dtype = torch.bfloat16
    ids = torch.randint(7, 11, (1, args.length))
    for step in range(2):  # the first step allocates the .grad buffers; the second is measured
        if step:
            m.zero_grad(set_to_none=False)
        base = heap_in_use()
        pm = _Peak()
        t0 = time.perf_counter()
        with pm:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = m(ids)
            loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), ids.view(-1))
            after_fwd = heap_in_use()
            pm.phase = "bwd: loss, head, final norm" if args.mode == "chunked" else "bwd"
            stack, seen = [loss.grad_fn], set()
            while stack:  # switch phase at the first block's backward
                n = stack.pop()
                if n is None or n in seen:
                    continue
                seen.add(n)
                if type(n).__name__ == "_ChunkedBlockBackward":
                    n.register_prehook(lambda g, pm=pm: setattr(pm, "phase", "bwd: blocks") or None)
                stack.extend(f for f, _ in n.next_functions)
            loss.backward()
        del logits, loss
    G, k = 2**30, args.scale_to / args.length
    peak = max(pm.by_phase.values()) - base
    res = "bf16" if args.residual_bf16 else "fp32"
    print(f"{args.mode} ({res} residual) {args.layers} x {args.d_model}, 1 x {args.length}, chunk {args.chunk}: "
          f"kept after forward {(after_fwd - base) / G:.3f} GiB, peak {peak / G:.3f} GiB "
          f"({time.perf_counter() - t0:.0f} s)")
    print(f"  scaled x{k:g} to {args.scale_to}: after forward {(after_fwd - base) / G * k:.2f} GiB, peak "
          f"{peak / G * k:.2f} GiB; by phase: "
          + ", ".join(f"{p} {(v - base) / G * k:.2f}" for p, v in pm.by_phase.items()))


if __name__ == "__main__":
    main()
