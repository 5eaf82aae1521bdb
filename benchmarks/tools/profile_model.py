"""Where one training step's time goes: torch.profiler over one forward + backward of the
bidirectional 16 x 256 model at 1 x L (default 131072, bf16 autocast, bf16 residual), per kernel,
with the scan kernels' share.

    python benchmarks/tools/profile_model.py [--length 131072] [--layer-chunk 0] [--ckpt] [--scan-config JSON]
    python benchmarks/tools/profile_model.py --device cpu --quick      # the script on a tiny model
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # noqa: E402

SCAN_KERNELS = ("_rows_", "_chunk_combine", "_gluon_bwd")


def main(argv=None):
    ap = common.parser(__doc__)
    ap.add_argument("--length", type=int, default=131072)
    ap.add_argument("--layer-chunk", type=int, default=0)
    ap.add_argument("--ckpt", action="store_true")
    ap.add_argument("--rows", type=int, default=30)
    ap.add_argument("--scan-config", default="", help="JSON: ScanTuning fields and fwd/bwd saved-state bounds (bench_scan.apply_config)")
    a = ap.parse_args(argv)

    import torch
    import torch.nn.functional as F
    from torch.profiler import ProfilerActivity, profile

    if a.scan_config:
        from bench_scan import apply_config

        apply_config(a.scan_config)
    dev = common.device(a.device)
    d, n, L = (256, 16, a.length) if not a.quick else (32, 2, min(a.length, 512))
    m = common.build_model(d, n, checkpoint=a.ckpt, residual_bf16=True, layer_chunk=a.layer_chunk).to(dev)
    ids = torch.randint(7, 11, (1, L), device=dev)

    def step():
        m.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            logits = m(ids)
        F.cross_entropy(logits.float().view(-1, logits.shape[-1]), ids.view(-1)).backward()

    for _ in range(1 if a.quick else 2):
        step()
    common.sync(dev)
    cuda = dev.type == "cuda"
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        step()
        common.sync(dev)
    ev = prof.key_averages()
    if cuda:  # the kernels themselves (an autograd function's CUDA time would count its kernels twice)
        ev = [e for e in ev if e.device_type == torch.autograd.DeviceType.CUDA]
    t = (lambda e: e.self_device_time_total) if cuda else (lambda e: e.self_cpu_time_total)
    total = sum(t(e) for e in ev)
    scan = sum(t(e) for e in ev if e.key.startswith(SCAN_KERNELS))
    print(common.header(dev, f"{n} x {d}; 1 x {L}; layer_chunk {a.layer_chunk}; ckpt {a.ckpt}"))
    print(f"# {'GPU' if cuda else 'CPU'} time {total / 1e3:.1f} ms, scan kernels {scan / 1e3:.1f} ms "
          f"({100 * scan / max(total, 1):.0f}%), rest {(total - scan) / 1e3:.1f} ms")
    rows = [(e.key[:110], t(e) / 1e3, e.count, t(e) / max(e.count, 1)) for e in sorted(ev, key=lambda e: -t(e))[:a.rows]
            if t(e) > 0]
    print(common.md_table(["kernel", "ms", "calls", "us per call"], [(k, ms, c, f"{us:.1f}") for k, ms, c, us in rows]))
    common.write_json(a.json, [dict(kernel=k, ms=ms, calls=c) for k, ms, c, _ in rows], dev, benchmark="profile_model",
                      total_ms=total / 1e3, scan_ms=scan / 1e3)


if __name__ == "__main__":
    main()
