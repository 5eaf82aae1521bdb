"""Depthwise conv + SiLU along the length (Mamba's conv, d_conv 4), channel-last, bf16: the fused
Triton kernel (mambadna.kernels.conv1d_silu) against the PyTorch path it replaced (cat with the
context, ATen depthwise conv on the transposed view, SiLU, back to channel-last; backend
"reference"), side by side: forward and forward+backward, median ms, speed-up, and the fraction of
the memory floor (forward: read x, write y; forward+backward: that plus read x, dy, write dx).

    python benchmarks/run.py conv
    python benchmarks/bench_conv.py --device cpu --quick
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

SHAPES = [(1, 131072, 512), (8, 131072, 512), (16, 4096, 1536), (1, 1048576, 512)]
QUICK_SHAPES = [(1, 4096, 64), (2, 1024, 128)]


def main(argv=None):
    ap = common.parser(__doc__)
    ap.add_argument("--backend", default="auto", choices=["auto", "triton"],
                    help="the fused kernel's backend (auto: Triton on CUDA, the reference on CPU)")
    a = ap.parse_args(argv)

    import torch
    from mambadna.kernels import conv1d_silu

    dev = common.device(a.device)
    dt = torch.bfloat16 if dev.type == "cuda" else torch.float32
    bw = common.copy_bandwidth(dev)
    print(common.header(dev, f"copy bandwidth {bw / 1e12:.2f} TB/s" if bw else ""))
    print("# baseline: the PyTorch path (backend='reference')")
    rows = []
    for b, L, D in QUICK_SHAPES if a.quick else SHAPES:
        torch.manual_seed(0)
        x = torch.randn(b, L, D, device=dev).to(dt).requires_grad_()
        w = (torch.randn(D, 1, 4, device=dev) * 0.3).requires_grad_()
        bias = torch.randn(D, device=dev).requires_grad_()
        g = torch.randn(b, L, D, device=dev).to(dt)
        nbytes = x.numel() * x.element_size()
        for name, floor_bytes in (("fwd", 2 * nbytes), ("fwd+bwd", 5 * nbytes)):
            res = {}
            for be in ("reference", a.backend):
                if name == "fwd":
                    fn = lambda be=be: conv1d_silu(x.detach(), w.detach(), bias.detach(), backend=be)  # noqa: E731
                else:
                    fn = lambda be=be: torch.autograd.grad(conv1d_silu(x, w, bias, backend=be), (x, w, bias), g)  # noqa: E731
                res[be] = common.time_ms(fn, dev, 300, a.quick)
            t, tb = res[a.backend], res["reference"]
            rows.append(dict(shape=str((b, L, D)), mode=name, ms=t, baseline_ms=tb, speedup=tb / t,
                             floor=common.floor_fraction(floor_bytes, bw, t)))
            print(f"({b}, {L}, {D}) {name}: fused {t:.3f} ms  PyTorch {tb:.3f} ms  x{tb / t:.2f}  "
                  f"floor {rows[-1]['floor']}", flush=True)
        yr = conv1d_silu(x, w, bias, backend="reference")
        yt = conv1d_silu(x, w, bias, backend=a.backend)
        print(f"  max |y - y_ref| / max |y_ref| = {((yt - yr).abs().max() / yr.abs().max()).item():.1e}")
        x = w = bias = g = yr = yt = None  # free before the next shape
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    print()
    print(common.md_table(["shape (b, L, D)", "pass", "fused ms", "PyTorch path ms", "speed-up", "floor"],
                          [(r["shape"], r["mode"], r["ms"], r["baseline_ms"], f"{r['speedup']:.2f}x", r["floor"])
                           for r in rows]))
    common.write_json(a.json, rows, dev, benchmark="conv", baseline="PyTorch path", copy_bandwidth=bw)
    return rows


if __name__ == "__main__":
    main()
