"""RMSNorm over d_model: the fused Triton kernel (mambadna.kernels.rms_norm) against the PyTorch
ops it replaced (the reference's memory-lean autograd Function; backend "reference"), side by
side: forward and forward+backward, median ms, speed-up, and the fraction of the memory floor
(forward: read x, write y; forward+backward: that plus read x, dy, write dx).

    python benchmarks/run.py norm
    python benchmarks/bench_norm.py --device cpu --quick
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

# (rows as batch x length, d_model, input dtype, output dtype): the model's cases
SHAPES = [((1, 131072), 256, "bfloat16", "bfloat16"), ((1, 131072), 256, "float32", "bfloat16"),
          ((8, 131072), 256, "bfloat16", "bfloat16"), ((1, 1048576), 256, "bfloat16", "bfloat16")]
QUICK_SHAPES = [((1, 4096), 64, "float32", "float32"), ((2, 2048), 128, "float32", "bfloat16")]


def main(argv=None):
    ap = common.parser(__doc__)
    ap.add_argument("--backend", default="auto", choices=["auto", "triton"])
    a = ap.parse_args(argv)

    import torch
    from mambadna.kernels import rms_norm

    dev = common.device(a.device)
    bw = common.copy_bandwidth(dev)
    print(common.header(dev, f"copy bandwidth {bw / 1e12:.2f} TB/s" if bw else ""))
    print("# baseline: PyTorch ops (backend='reference')")
    rows = []
    for lead, d, dts, odts in QUICK_SHAPES if a.quick else SHAPES:
        dt, odt = getattr(torch, dts), getattr(torch, odts)
        torch.manual_seed(0)
        x = torch.randn(*lead, d, device=dev).to(dt).requires_grad_()
        w = (torch.rand(d, device=dev) + 0.5).requires_grad_()
        g = torch.randn(*lead, d, device=dev).to(odt)
        xb, ob, n = x.element_size(), g.element_size(), x.numel()
        for name, floor_bytes in (("fwd", n * (xb + ob)), ("fwd+bwd", n * (3 * xb + 2 * ob))):
            res = {}
            for be in ("reference", a.backend):
                if name == "fwd":
                    fn = lambda be=be: rms_norm(x.detach(), w.detach(), 1e-5, odt, backend=be)  # noqa: E731
                else:
                    fn = lambda be=be: torch.autograd.grad(rms_norm(x, w, 1e-5, odt, backend=be), (x, w), g)  # noqa: E731
                res[be] = common.time_ms(fn, dev, 300, a.quick)
            t, tb = res[a.backend], res["reference"]
            shape = str(tuple(lead) + (d,))
            rows.append(dict(shape=shape, dtypes=f"{dts} -> {odts}", mode=name, ms=t, baseline_ms=tb,
                             speedup=tb / t, floor=common.floor_fraction(floor_bytes, bw, t)))
            print(f"{shape} {dts} -> {odts} {name}: fused {t:.3f} ms  PyTorch {tb:.3f} ms  x{tb / t:.2f}  "
                  f"floor {rows[-1]['floor']}", flush=True)
        yr = rms_norm(x, w, 1e-5, odt, backend="reference").float()
        yt = rms_norm(x, w, 1e-5, odt, backend=a.backend).float()
        print(f"  max |y - y_ref| / max |y_ref| = {((yt - yr).abs().max() / yr.abs().max()).item():.1e}")
        x = w = g = None  # free before the next shape
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    print()
    print(common.md_table(["shape", "in -> out", "pass", "fused ms", "PyTorch ops ms", "speed-up", "floor"],
                          [(r["shape"], r["dtypes"], r["mode"], r["ms"], r["baseline_ms"], f"{r['speedup']:.2f}x",
                            r["floor"]) for r in rows]))
    common.write_json(a.json, rows, dev, benchmark="norm", baseline="PyTorch ops", copy_bandwidth=bw)
    return rows


if __name__ == "__main__":
    main()
