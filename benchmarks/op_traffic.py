"""Memory traffic and GEMM work of every op outside the fused kernels in one training
step (forward + backward) of the bidirectional 16 x 256 model, counted on the CPU
(issue 4: what the non-scan ~118 ms of a 131072-base step on the H100 is made of).

    python benchmarks/op_traffic.py [--length 8192] [--scale-to 131072] [--bf16-residual]

Every aten op that runs is recorded with the bytes of its tensor inputs and outputs
(views count 0) and, for matrix products, its flops. The scan and the conv are replaced
by stand-ins whose own traffic is listed apart (their kernels are timed in
bench_scan.py / bench_conv.py). The time columns are floors on the H100 (3.0 TB/s
copy bandwidth, 400 TFLOP/s bf16 dense): an op can only be slower. Counts are per
step, scaled linearly in length to --scale-to.
"""
import argparse
import collections
import os
import sys

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

sys.path.insert(0, os.path.dirname(__file__))
from bench_pretrain import mambadna_model  # noqa: E402

import mambadna.model as mm  # noqa: E402

BW, FLOPS = 3.0e12, 400e12
MATMUL = {"mm", "addmm", "bmm", "baddbmm", "linear", "matmul"}
_skip = [0]


def _nbytes(t):
    return t.numel() * t.element_size()


class Traffic(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.rows = collections.defaultdict(lambda: [0, 0, 0.0])  # calls, bytes, flops

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if _skip[0]:
            return out
        ins = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
        outs = [o for o in tree_flatten(out)[0] if isinstance(o, torch.Tensor)]
        ptrs = {a.untyped_storage().data_ptr() for a in ins}
        if outs and all(o.untyped_storage().data_ptr() in ptrs for o in outs):
            return out  # a view (or in-place op returning its input): counted where it is read
        name = func.overloadpacket.__name__
        by = sum(_nbytes(a) for a in ins) + sum(_nbytes(o) for o in outs)
        fl = 0.0
        if name in MATMUL and len(outs) == 1:
            mats = [a for a in ins if a.dim() >= 2]
            if mats:
                k = mats[0].shape[-1]
                fl = 2.0 * outs[0].numel() * k
        r = self.rows[(name, tuple(outs[0].shape[-1:]) if outs else ())]
        r[0] += 1
        r[1] += by
        r[2] += fl
        return out


KERNEL = collections.Counter()


class _StandIn(torch.autograd.Function):
    """Output of the given shape; gradients of zeros; its I/O bytes go to KERNEL[name]."""

    @staticmethod
    def forward(ctx, name, out_like, *inputs):
        ctx.name, ctx.shapes = name, [(i.shape, i.dtype) if isinstance(i, torch.Tensor) else None
                                      for i in inputs]
        _skip[0] += 1
        try:
            KERNEL[name + " fwd"] += sum(_nbytes(i) for i in inputs if isinstance(i, torch.Tensor)) \
                + _nbytes(out_like)
            return torch.zeros_like(out_like)
        finally:
            _skip[0] -= 1

    @staticmethod
    def backward(ctx, g):
        _skip[0] += 1
        try:
            grads = [torch.zeros(s, dtype=d) if s is not None else None for s, d in
                     (x if x is not None else (None, None) for x in ctx.shapes)]
            KERNEL[ctx.name + " bwd"] += _nbytes(g) + 2 * sum(_nbytes(x) for x in grads if x is not None)
            return (None, None, *grads)
        finally:
            _skip[0] -= 1


def _conv(x, weight, bias, context, reverse=False, **_):
    return _StandIn.apply("conv", x, x, weight, bias)


def _bidir(xf, df, Af, Bf, Cf, xr, dr, Ar, Br, Cr, D_f=None, D_r=None, z=None, delta_bias_f=None,
           delta_bias_r=None, delta_softplus=False, **_):
    return _StandIn.apply("scan(bidir)", z, xf, df, Af, Bf, Cf, xr, dr, Ar, Br, Cr, D_f, D_r, z,
                          delta_bias_f, delta_bias_r)


def _norm(x, weight, eps=1e-5, out_dtype=None, **_):
    out = x if out_dtype in (None, x.dtype) else x.to(out_dtype)
    return _StandIn.apply("rms_norm", out, x, weight)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--length", type=int, default=8192)
    ap.add_argument("--scale-to", type=int, default=131072)
    ap.add_argument("--bf16-residual", action="store_true")
    ap.add_argument("--rows", type=int, default=40)
    ap.add_argument("--unfused-norm", action="store_true",
                    help="count the RMSNorm as PyTorch ops (the CPU path) instead of the fused kernel")
    args = ap.parse_args()
    mm.conv1d_silu, mm.bidirectional_selective_scan = _conv, _bidir
    if not args.unfused_norm:
        mm.rms_norm = _norm
    torch.manual_seed(0)
    m = mambadna_model(256, 16, ckpt=False, residual_bf16=args.bf16_residual).train()
    ids = torch.randint(7, 11, (1, args.length))
    mode = Traffic()
    with mode:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = m(ids)
        F.cross_entropy(logits.float().view(-1, logits.shape[-1]), ids.view(-1)).backward()
    s = args.scale_to / args.length
    rows = sorted(mode.rows.items(), key=lambda kv: -max(kv[1][1] / BW, kv[1][2] / FLOPS))
    tot_b = sum(r[1] for r in mode.rows.values()) * s
    tot_f = sum(r[2] for r in mode.rows.values()) * s
    n_ops = sum(r[0] for r in mode.rows.values())
    print(f"# one fwd+bwd step, 1 x {args.scale_to} (counted at {args.length}, x{s:g}); "
          f"bf16 autocast, residual {'bf16' if args.bf16_residual else 'fp32'}")
    print(f"# outside the fused kernels: {n_ops} ops, {tot_b / 1e9:.2f} GB -> {tot_b / BW * 1e3:.1f} ms at "
          f"{BW / 1e12:.1f} TB/s; GEMMs {tot_f / 1e12:.2f} TFLOP -> {tot_f / FLOPS * 1e3:.1f} ms at "
          f"{FLOPS / 1e12:.0f} TFLOP/s")
    print("| op | last dim | calls | GB | floor ms (bytes) | GFLOP | floor ms (flops) |")
    print("|---|---|---|---|---|---|---|")
    for (name, shp), (c, b, f) in rows[: args.rows]:
        print(f"| {name} | {shp[0] if shp else ''} | {c} | {b * s / 1e9:.3f} | {b * s / BW * 1e3:.2f} | "
              f"{f * s / 1e9:.1f} | {f * s / FLOPS * 1e3:.2f} |")
    print("\nfused kernels' own I/O (stand-ins), floor ms at the copy bandwidth:")
    for k, v in sorted(KERNEL.items()):
        print(f"  {k}: {v * s / 1e9:.2f} GB -> {v * s / BW * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
