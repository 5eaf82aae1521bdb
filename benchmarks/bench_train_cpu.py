"""Training on CPU: the compiled training scan (kernels/scan/cpu_grad.py, numba) against the
PyTorch reference it replaced there (backend "reference", autograd through the loop), side by
side: the bidirectional scan's forward+backward at a fine-tuning shape, then one whole training
step (forward+backward) of the 8 x 256 bidirectional model. Median wall-clock ms, speed-up,
tokens/s of the step; the threads are torch's (``torch.get_num_threads()``).

    python benchmarks/run.py train_cpu
    python benchmarks/bench_train_cpu.py --quick
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

# (batch, length): a CNNProm-style fine-tuning batch (81 bp) and a small window batch (the
# reference step at 8 x 1024 needs more than 24 GiB)
SHAPES = [(32, 81), (4, 512)]
QUICK_SHAPES = [(4, 64)]


def _scan_inputs(b, L, d, N, torch):
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    one = lambda: [r(b, L, d), 0.5 * r(b, L, d) - 1, -(torch.rand(d, N, generator=g) + 0.1),  # noqa: E731
                   r(b, L, 1, N), r(b, L, 1, N)]
    ts = one() + one() + [r(d), r(d), r(b, L, d), r(d), r(d)]
    return [t.requires_grad_() for t in ts]


def main(argv=None):
    ap = common.parser(__doc__)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=8)
    a = ap.parse_args(argv)

    import torch
    from mambadna.kernels import bidirectional_selective_scan

    dev = common.device("cpu")
    d_model, layers = (32, 2) if a.quick else (a.d_model, a.layers)
    print(common.header(dev, f"{torch.get_num_threads()} threads; model {layers} x {d_model} bidirectional"))
    print("# baseline: the PyTorch reference (backend='reference'), autograd through the loop")
    model = common.build_model(d_model, layers, bidirectional=True).train()
    rows = []
    for b, L in QUICK_SHAPES if a.quick else SHAPES:
        d, N = 2 * d_model, 16
        ts = _scan_inputs(b, L, d, N, torch)

        def scan(be):
            y = bidirectional_selective_scan(*ts[:10], D_f=ts[10], D_r=ts[11], z=ts[12], delta_bias_f=ts[13],
                                             delta_bias_r=ts[14], delta_softplus=True, backend=be)
            return torch.autograd.grad(y.sum(), ts)

        ids = torch.randint(7, 11, (b, L))

        def step(be):
            os.environ["MAMBADNA_SCAN_BACKEND"] = "reference" if be == "reference" else ""
            try:
                model.zero_grad(set_to_none=True)
                model(ids).float().logsumexp(-1).mean().backward()
            finally:
                os.environ.pop("MAMBADNA_SCAN_BACKEND", None)

        for what, fn in ((f"scan fwd+bwd (d_inner {d})", scan), ("model step", step)):
            t = common.time_ms(lambda: fn("auto"), dev, quick=a.quick)
            tb = common.time_ms(lambda: fn("reference"), dev, quick=True)
            rows.append(dict(shape=f"{b} x {L}", what=what, ms=t, baseline_ms=tb, speedup=tb / t,
                             tokens_per_s=b * L / (t / 1e3)))
            print(f"{b} x {L} {what}: compiled {t:.0f} ms  reference {tb:.0f} ms  x{tb / t:.1f}  "
                  f"{rows[-1]['tokens_per_s']:.0f} tokens/s", flush=True)
    print()
    print(common.md_table(["batch x length", "what", "compiled ms", "reference ms", "speed-up", "tokens/s"],
                          [(r["shape"], r["what"], r["ms"], r["baseline_ms"], f"{r['speedup']:.1f}x",
                            f"{r['tokens_per_s']:.0f}") for r in rows]))
    common.write_json(a.json, rows, dev, benchmark="train_cpu", baseline="PyTorch reference scan")
    return rows


if __name__ == "__main__":
    main()
