"""Per-kernel device time (torch.profiler) of the scan's forward walked up against down in time,
and of the bidirectional forward and forward+backward (development tool, GPU):

    python benchmarks/profile_dirs.py [--shapes 3,1] [--config JSON]

Prints, per shape and mode, each kernel's mean time a call and its calls per iteration.
"""
import argparse
import json
import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(__file__))
from bench_scan import KEYS, SHAPES, DT, make_inputs, req  # noqa: E402
from mambadna.kernels import triton_scan as ts  # noqa: E402


def table(title, fn, iters):
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    rows = [(e.key, e.device_time_total / 1e3 / iters, e.count / iters) for e in prof.key_averages()
            if e.device_time_total > 0]
    rows.sort(key=lambda r: -r[1])
    tot = sum(r[1] for r in rows)
    print(f"{title}: {tot:.3f} ms of kernels an iteration")
    for k, ms, n in rows[:10]:
        print(f"    {ms:8.3f} ms  x{n:4.1f}  {k[:70]}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="3,1")
    ap.add_argument("--config", default="")
    ap.add_argument("--iters", type=int, default=5)
    args = ap.parse_args()
    if args.config:
        ts.CONFIG.update(json.loads(args.config))
    print(f"device {torch.cuda.get_device_name()}; CONFIG {json.dumps(ts.CONFIG)}")
    for si in args.shapes.split(","):
        b, D, N, L = SHAPES[int(si)]
        x = make_inputs(b, D, N, L)
        x2 = make_inputs(b, D, N, L, seed=2)
        g = torch.randn(b, L, D, device="cuda").to(DT)
        for rev in (False, True):
            table(f"{(b, D, N, L)} fwd {'reverse' if rev else 'causal'}",
                  lambda: ts.selective_scan_triton(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"],
                                                   x["bias"], True, reverse=rev), args.iters)
        bi = lambda xa, xb: ts.bidirectional_selective_scan_triton(  # noqa: E731
            xa["u"], xa["delta"], xa["A"], xa["B"], xa["C"], xb["u"], xb["delta"], xb["A"], xb["B"], xb["C"],
            xa["D"], xb["D"], xa["z"], xa["bias"], xb["bias"], True)
        table(f"{(b, D, N, L)} bidirectional fwd", lambda: bi(x, x2), args.iters)
        xr, xr2 = req(x), req(x2)
        table(f"{(b, D, N, L)} bidirectional fwd+bwd",
              lambda: torch.autograd.grad(bi(xr, xr2), [xr[k] for k in KEYS] + [xr2[k] for k in KEYS if k != "z"], g),
              max(1, args.iters // 2))
        del x, x2, xr, xr2, g
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
