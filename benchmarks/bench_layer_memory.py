"""Peak memory and time of one training step (fwd+bwd) by layer-memory mode, side by side:
plain autograd (the baseline), per-layer checkpointing, and exact length-chunked blocks
(`pretrain --layer-chunk`). Each mode runs in a fresh subprocess; on CUDA the peak is
torch.cuda.max_memory_allocated, on CPU the process's peak RSS growth over the step.

    python benchmarks/run.py layer_memory -- --length 1048576 --layers 16 --chunk 131072 \\
        --residual-bf16 --modes checkpoint,chunked
    python benchmarks/bench_layer_memory.py --device cpu --quick

--residual-bf16 keeps the residual stream between blocks in bf16 (as `pretrain --residual-bf16`);
it turns bf16 autocast on on CPU too.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

MODES = {"plain": "plain autograd", "checkpoint": "per-layer checkpointing", "chunked": "length-chunked blocks"}


def child(a):
    import resource

    import torch
    import torch.nn.functional as F

    dev = common.device(a.device)
    torch.manual_seed(0)
    m = common.build_model(a.d_model, a.layers, checkpoint=a.child == "checkpoint",
                           layer_chunk=a.chunk if a.child == "chunked" else 0,
                           residual_bf16=a.residual_bf16).to(dev).train()
    ids = torch.randint(7, 11, (1, a.length), device=dev)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    common.reset_peak(dev)
    t = time.perf_counter()
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda" or a.residual_bf16):
        logits = m(ids)
    F.cross_entropy(logits.float().view(-1, logits.shape[-1]), ids.view(-1)).backward()
    common.sync(dev)
    if dev.type == "cuda":
        peak = common.peak_gib(dev)
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 2**20  # KiB -> GiB
    print(json.dumps({"seconds": time.perf_counter() - t, "peak_gib": peak}))


def main(argv=None):
    ap = common.parser(__doc__)
    ap.add_argument("--length", type=int, default=16384)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--chunk", type=int, default=2048)
    ap.add_argument("--modes", default="plain,checkpoint,chunked", help="comma-separated: " + ", ".join(MODES))
    ap.add_argument("--residual-bf16", action="store_true", help="bf16 residual stream (and bf16 autocast on CPU)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.quick:
        a.length, a.layers, a.d_model, a.chunk = min(a.length, 1024), min(a.layers, 2), min(a.d_model, 32), 256
    if a.child:
        return child(a)
    dev = common.device(a.device)
    print(common.header(dev, f"{a.layers} x {a.d_model} bidirectional, 1 x {a.length}, layer chunk {a.chunk}"
                             f"{', bf16 residual' if a.residual_bf16 else ''}"))
    print("# baseline: plain autograd")
    rows = []
    for mode in a.modes.split(","):
        cmd = [sys.executable, os.path.abspath(__file__), "--child", mode, "--device", str(dev), "--length",
               str(a.length), "--layers", str(a.layers), "--d-model", str(a.d_model), "--chunk", str(a.chunk)]
        out = subprocess.run(cmd + (["--residual-bf16"] if a.residual_bf16 else []), capture_output=True, text=True)
        if out.returncode:
            err = (out.stderr.strip().splitlines() or ["?"])[-1]
            rows.append(dict(mode=mode, seconds=float("nan"), peak_gib=float("nan"), status=f"failed: {err}"))
        else:
            rows.append(dict(mode=mode, **json.loads(out.stdout.strip().splitlines()[-1]), status="ok"))
        r = rows[-1]
        print(f"{MODES.get(mode, mode):<24} {r['seconds']:8.2f} s {r['peak_gib']:9.2f} GiB  {r['status']}", flush=True)
    base = next((r for r in rows if r["mode"] == "plain" and r["status"] == "ok"), None)
    print()
    print(common.md_table(["mode", "seconds", "peak GiB", "memory vs plain", "status"],
                          [(MODES.get(r["mode"], r["mode"]), f"{r['seconds']:.2f}", f"{r['peak_gib']:.2f}",
                            f"{r['peak_gib'] / base['peak_gib']:.2f}x" if base and base["peak_gib"] > 0 else "-",
                            r["status"]) for r in rows]))
    common.write_json(a.json, rows, dev, benchmark="layer_memory", length=a.length, layers=a.layers,
                      d_model=a.d_model, chunk=a.chunk, residual_bf16=a.residual_bf16)
    return rows


if __name__ == "__main__":
    main()
