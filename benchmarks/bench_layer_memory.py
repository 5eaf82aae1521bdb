"""Peak memory of one training step (fwd+bwd) by layer-memory mode.

Modes: plain autograd, per-layer checkpointing, and exact length-chunked
blocks (``--layer-chunk``). Each mode runs in a fresh subprocess; on CUDA the
peak is torch.cuda.max_memory_allocated, on CPU the process's peak RSS minus
its RSS before the step.

    python benchmarks/bench_layer_memory.py --length 16384 --layers 4 --d-model 256 --chunk 2048
    python benchmarks/bench_layer_memory.py --length 1048576 --layers 16 --d-model 256 \
        --chunk 131072 --residual-bf16 --modes checkpoint,chunked

``--residual-bf16`` keeps the residual stream between blocks in bf16 (as
``mambadna pretrain --residual-bf16``); it turns bf16 autocast on on CPU too.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def child(args):
    import torch
    import torch.nn.functional as F

    from mambadna.config import ModelConfig
    from mambadna.model import MambaDNA

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    m = MambaDNA(ModelConfig(d_model=args.d_model, n_layers=args.layers, bidirectional=True)).to(dev).train()
    if args.mode == "checkpoint":
        m.gradient_checkpointing = True
    elif args.mode == "chunked":
        m.layer_chunk = args.chunk
    if args.residual_bf16:
        m.residual_dtype = torch.bfloat16
    ids = torch.randint(7, 11, (1, args.length), device=dev)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda" or args.residual_bf16):
        logits = m(ids)
    F.cross_entropy(logits.float().view(-1, 12), ids.view(-1)).backward()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 2**20  # KiB -> GiB
    print(json.dumps({"mode": args.mode, "seconds": time.perf_counter() - t, "peak_gib": peak,
                      "device": str(dev)}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--length", type=int, default=16384)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--chunk", type=int, default=2048)
    ap.add_argument("--mode", default=None)
    ap.add_argument("--modes", default="plain,checkpoint,chunked", help="comma-separated modes to run")
    ap.add_argument("--residual-bf16", action="store_true",
                    help="bf16 residual stream (and bf16 autocast on CPU)")
    args = ap.parse_args()
    if args.mode:
        return child(args)
    print(f"# {args.layers} x {args.d_model} bidirectional, 1 x {args.length}, layer chunk {args.chunk}"
          f"{', bf16 residual' if args.residual_bf16 else ''}")
    print(f"{'mode':<12} {'seconds':>8} {'peak GiB':>9}")
    for mode in args.modes.split(","):
        out = subprocess.run([sys.executable, __file__, "--mode", mode, "--length", str(args.length),
                              "--layers", str(args.layers), "--d-model", str(args.d_model),
                              "--chunk", str(args.chunk)]
                             + (["--residual-bf16"] if args.residual_bf16 else []),
                             capture_output=True, text=True)
        if out.returncode:
            print(f"{mode:<12} failed: {out.stderr.strip().splitlines()[-1]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{mode:<12} {r['seconds']:8.2f} {r['peak_gib']:9.2f}   ({r['device']})")


if __name__ == "__main__":
    main()
