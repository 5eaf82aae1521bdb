"""Where one training step's GPU time goes (issue 4): torch.profiler over one forward +
backward of the bidirectional 16 x 256 model at 1 x L (default 131072, bf16 autocast),
per kernel, with the scan kernels' share.

    python benchmarks/profile_model.py [--length 131072] [--layer-chunk 0] [--ckpt] [--scan-config JSON]
"""
import argparse
import os
import sys

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(__file__))
from bench_pretrain import mambadna_model  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--length", type=int, default=131072)
    ap.add_argument("--layer-chunk", type=int, default=0)
    ap.add_argument("--ckpt", action="store_true")
    ap.add_argument("--rows", type=int, default=30)
    ap.add_argument("--scan-config", default="", help="JSON update of triton_scan.CONFIG")
    args = ap.parse_args()
    if args.scan_config:
        import json

        from mambadna.kernels import triton_scan

        triton_scan.CONFIG.update(json.loads(args.scan_config))
    dev = torch.device("cuda")
    m = mambadna_model(256, 16, ckpt=args.ckpt, residual_bf16=True, layer_chunk=args.layer_chunk).to(dev)
    ids = torch.randint(7, 11, (1, args.length), device=dev)

    def step():
        m.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = m(ids)
        F.cross_entropy(logits.float().view(-1, logits.shape[-1]), ids.view(-1)).backward()

    for _ in range(2):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    ev = prof.key_averages()
    total = sum(e.device_time_total for e in ev)
    scan = sum(e.device_time_total for e in ev if e.key.startswith(("_rows_", "_chunk_combine", "_gluon_bwd")))
    print(f"# {torch.cuda.get_device_name()}; 1 x {args.length}; layer_chunk {args.layer_chunk}; "
          f"ckpt {args.ckpt}: GPU time {total / 1e3:.1f} ms, scan kernels {scan / 1e3:.1f} ms "
          f"({100 * scan / total:.0f}%), rest {(total - scan) / 1e3:.1f} ms")
    print("| kernel | GPU ms | calls | us per call |\n|---|---|---|---|")
    for e in sorted(ev, key=lambda e: -e.device_time_total)[:args.rows]:
        if e.device_time_total > 0:
            print(f"| {e.key[:110]} | {e.device_time_total / 1e3:.2f} | {e.count} | "
                  f"{e.device_time_total / max(e.count, 1):.1f} |")


if __name__ == "__main__":
    main()
