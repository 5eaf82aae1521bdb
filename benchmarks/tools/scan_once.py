"""One warm-up and one timed forward+backward of the Triton scan at one shape, for Nsight Compute
(per-kernel counters; see ncu_scan.sh):

    python benchmarks/tools/scan_once.py B D N L [CONFIG_JSON]
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for k in "BDNL":
        ap.add_argument(k, type=int)
    ap.add_argument("config", nargs="?", default="", help="JSON: ScanTuning fields and fwd/bwd saved-state bounds (bench_scan.apply_config)")
    a = ap.parse_args()

    import torch
    from bench_scan import KEYS, apply_config, make_inputs, ours, req

    if a.config:
        apply_config(a.config)
    b, D, N, L = a.B, a.D, a.N, a.L
    x = req(make_inputs((b, D, N, L), torch.device("cuda"), torch.bfloat16))
    go = torch.randn(b, L, D, device="cuda").to(torch.bfloat16)
    for _ in range(2):
        y = ours(x, "triton")
        torch.autograd.grad(y, [x[k] for k in KEYS], go)
    torch.cuda.synchronize()
    print("ok", float(y.float().abs().mean()))


if __name__ == "__main__":
    main()
