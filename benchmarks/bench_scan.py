"""Selective scan: mambadna.kernels against mamba_ssm's CUDA selective_scan_fn, side by side.

bf16 inputs (fp32 on CPU), z gate, fp32 A/D/delta_bias, delta_softplus. mambadna gets its native
channel-last layout (batch, length, d_inner), mamba_ssm its channel-first one (layout copies not
timed). Rows: causal forward and forward+backward, the reverse forward (no flips; against
mamba_ssm's causal call), the PyTorch reference at small shapes, and the fused bidirectional scan
against two mamba_ssm calls with flips (Caduceus). Columns: median ms, speed-up (baseline /
mambadna) and the fraction of the memory floor (each input read once, each output written once,
over the copy bandwidth measured in the same run). Also checks outputs and every gradient against
mamba_ssm (each shape) and the reference (small shapes).

    python benchmarks/run.py scan                      # GPU, mamba_ssm importable (gpu.sh builds it)
    python benchmarks/bench_scan.py --device cpu --quick
    python benchmarks/bench_scan.py --profile --shapes 0   # per-kernel times (torch.profiler)
"""
from __future__ import annotations

import contextlib
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

SHAPES = [(8, 512, 16, 131072), (1, 512, 16, 1 << 20), (16, 1536, 16, 4096), (64, 512, 16, 1024)]
QUICK_SHAPES = [(2, 64, 16, 256), (1, 32, 8, 128)]
KEYS = ["u", "delta", "A", "B", "C", "D", "z", "bias"]
SMALL = 64 * 1024 * 512  # b * L * D up to which the PyTorch reference is checked and timed


def make_inputs(shape, dev, dtype, seed=0):
    import torch

    b, D, N, L = shape
    g = torch.Generator(device=dev).manual_seed(seed)
    r = lambda *s: torch.randn(*s, device=dev, generator=g)  # noqa: E731
    return dict(u=r(b, L, D).to(dtype), delta=(0.5 * r(b, L, D) - 1.0).to(dtype), z=r(b, L, D).to(dtype),
                B=r(b, L, 1, N).to(dtype), C=r(b, L, 1, N).to(dtype), A=-torch.exp(0.5 * r(D, N)),  # -exp(A_log)
                D=r(D), bias=0.1 * r(D))


def req(x):
    return {k: v.detach().requires_grad_() for k, v in x.items()}


def rel(a, b):
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def to_mamba(x):
    """channel-last -> mamba_ssm's channel-first contiguous layout (not timed)."""
    t = lambda v: v.transpose(1, 2).contiguous()  # noqa: E731
    return dict(u=t(x["u"]), delta=t(x["delta"]), z=t(x["z"]), B=x["B"].permute(0, 2, 3, 1).contiguous(),
                C=x["C"].permute(0, 2, 3, 1).contiguous(), A=x["A"], D=x["D"], bias=x["bias"])


def from_mamba(k, t):
    if k in ("u", "delta", "z"):
        return t.transpose(1, 2)
    return t.permute(0, 3, 1, 2) if k in ("B", "C") else t


def ours(x, backend, reverse=False):
    from mambadna.kernels import selective_scan

    return selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["bias"],
                          delta_softplus=True, reverse=reverse, backend=backend)


def ours_bi(f, r, backend):
    from mambadna.kernels import bidirectional_selective_scan

    return bidirectional_selective_scan(f["u"], f["delta"], f["A"], f["B"], f["C"], r["u"], r["delta"], r["A"],
                                        r["B"], r["C"], f["D"], r["D"], f["z"], f["bias"], r["bias"],
                                        delta_softplus=True, backend=backend)


def reference(x):
    from mambadna.kernels import selective_scan_ref

    return selective_scan_ref(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["bias"], True)


def mamba_ssm_scan():
    """mamba_ssm's selective_scan_fn, or (None, why)."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

        return selective_scan_fn, ""
    except Exception as e:  # noqa: BLE001 - only on the GPU machine with the baseline built
        return None, f"{type(e).__name__}: {e}"


def scan_internals():
    """The Triton scan module, under today's name or the pre-regroup one."""
    try:
        from mambadna.kernels.scan import triton as ts
    except ImportError:
        from mambadna.kernels import triton_scan as ts  # revisions before the kernels were grouped by op
    return ts


def apply_config(text):
    """For this process, the JSON object text: ScanTuning fields, and "fwd"/"bwd" for the
    saved-state budget's bounds (revisions before ScanTuning: an update of their CONFIG)."""
    ts, upd = scan_internals(), json.loads(text)
    if not hasattr(ts, "use_tuning"):
        ts.CONFIG.update(upd)
        return
    bounds = {k: upd.pop(k) for k in ("fwd", "bwd") if k in upd}
    _CONFIG_SCOPE.enter_context(ts.use_tuning(**upd))
    _CONFIG_SCOPE.enter_context(ts.BUDGET.bounded(**bounds))


_CONFIG_SCOPE = contextlib.ExitStack()  # (left open: the process's)


def floor_bytes(b, D, N, L, mode, bidir=False):
    bld, bln = b * L * D * 2, b * L * N * 2
    k = 2 if bidir else 1
    if mode == "fwd":
        return k * (2 * bld + 2 * bln) + 2 * bld  # u, delta, B, C per direction; z, y
    return k * (4 * bld + 4 * bln) + 4 * bld  # + du, ddelta, dB, dC; z, g, y, dz


def main(argv=None):
    ap = common.parser(__doc__)
    ap.add_argument("--shapes", default="", help="indices into SHAPES (comma separated)")
    ap.add_argument("--backend", default="auto", choices=["auto", "triton", "reference"])
    ap.add_argument("--config", default="", help='JSON of ScanTuning fields and budget bounds ("fwd", "bwd"): '
                    'an A/B of a tunable')
    ap.add_argument("--skip-bidir", action="store_true")
    ap.add_argument("--profile", action="store_true", help="per-kernel times of one fwd+bwd per shape, nothing else")
    a = ap.parse_args(argv)

    import torch

    dev = common.device(a.device)
    dt = torch.bfloat16 if dev.type == "cuda" else torch.float32
    if a.config:
        apply_config(a.config)
    shapes = QUICK_SHAPES if a.quick else SHAPES
    if a.shapes:
        shapes = [shapes[int(i)] for i in a.shapes.split(",")]
    torch.manual_seed(0)
    if a.profile:
        for shp in shapes:
            profile(shp, dev, dt, a.backend)
        return []
    base, why = mamba_ssm_scan() if dev.type == "cuda" else (None, "CUDA only")
    bw = common.copy_bandwidth(dev)
    extra = f"copy bandwidth {bw / 1e12:.2f} TB/s" if bw else ""
    if a.config:
        extra += f"; tuning {a.config}"
    print(common.header(dev, extra.strip("; ")))
    print("# baseline: mamba_ssm selective_scan_fn" + (f" unavailable ({why})" if base is None else ""))
    rows = []
    rep = lambda shp: 400 if shp[0] * shp[3] * shp[1] > 1e8 else 200  # noqa: E731

    def add(shp, mode, t, tm, nbytes):
        rows.append(dict(shape=str(shp), mode=mode, ms=t, baseline_ms=tm,
                         speedup=tm / t if tm == tm else float("nan"),
                         floor=common.floor_fraction(nbytes, bw, t) if nbytes else "-"))
        r = rows[-1]
        print(f"{r['shape']} {mode}: mambadna {t:.3f} ms  baseline {common.fmt(tm)} ms  "
              f"x{common.fmt(r['speedup'], 2)}  floor {r['floor']}", flush=True)

    for shp in shapes:
        b, D, N, L = shp
        x = make_inputs(shp, dev, dt)
        g = torch.randn(b, L, D, device=dev).to(dt)
        # ---- correctness
        xr = req(x)
        y1 = ours(xr, a.backend)
        g1 = torch.autograd.grad(y1, [xr[k] for k in KEYS], g)
        if base is not None:
            m = req(to_mamba(x))
            y2 = base(m["u"], m["delta"], m["A"], m["B"], m["C"], m["D"], m["z"], m["bias"], delta_softplus=True)
            g2 = torch.autograd.grad(y2, [m[k] for k in KEYS], g.transpose(1, 2).contiguous())
            errs = {"y": rel(y1, y2.transpose(1, 2))} | {k: rel(p, from_mamba(k, q)) for k, p, q in zip(KEYS, g1, g2)}
            print(f"check vs mamba_ssm {shp}: " + " ".join(f"{k}={v:.1e}" for k, v in errs.items()))
            del m, y2, g2
        if b * L * D <= SMALL:
            xr2 = req(x)
            y3 = reference(xr2)
            g3 = torch.autograd.grad(y3, [xr2[k] for k in KEYS], g)
            errs = {"y": rel(y1, y3)} | {k: rel(p, q) for k, p, q in zip(KEYS, g1, g3)}
            print(f"check vs reference {shp}: " + " ".join(f"{k}={v:.1e}" for k, v in errs.items()))
            del y3, g3
        del y1, g1
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        # ---- timing
        xr = req(x)
        T = lambda fn, r=rep(shp): common.time_ms(fn, dev, r, a.quick)  # noqa: E731
        t_f = T(lambda: ours(x, a.backend))
        t_fb = T(lambda: torch.autograd.grad(ours(xr, a.backend), [xr[k] for k in KEYS], g))
        t_mf = t_mfb = float("nan")
        if base is not None:
            m, mr, gm = to_mamba(x), req(to_mamba(x)), g.transpose(1, 2).contiguous()
            call = lambda v: base(v["u"], v["delta"], v["A"], v["B"], v["C"], v["D"], v["z"], v["bias"],  # noqa: E731
                                  delta_softplus=True)
            t_mf = T(lambda: call(m))
            t_mfb = T(lambda: torch.autograd.grad(call(mr), [mr[k] for k in KEYS], gm))
            del m, mr, gm
        add(shp, "causal fwd", t_f, t_mf, floor_bytes(b, D, N, L, "fwd"))
        add(shp, "causal fwd+bwd", t_fb, t_mfb, floor_bytes(b, D, N, L, "fwd+bwd"))
        add(shp, "reverse fwd", T(lambda: ours(x, a.backend, reverse=True)), t_mf, floor_bytes(b, D, N, L, "fwd"))
        if b * L * D <= SMALL:
            xr2 = req(x)
            add(shp, "pytorch ref fwd", T(lambda: reference(x), 200), t_mf, 0)
            add(shp, "pytorch ref fwd+bwd",
                T(lambda: torch.autograd.grad(reference(xr2), [xr2[k] for k in KEYS], g), 200), t_mfb, 0)
        x = xr = g = None  # free before the next shape
        if dev.type == "cuda":
            torch.cuda.empty_cache()

    if not a.skip_bidir:
        for shp in [s for s in shapes if s[0] * s[3] <= 8 * 131072][:2]:
            bidir(shp, dev, dt, a, base, add)

    print()
    print(common.md_table(["shape (B, D, N, L)", "mode", "mambadna ms", "mamba_ssm ms", "speed-up", "floor"],
                          [(r["shape"], r["mode"], r["ms"], r["baseline_ms"],
                            f"{r['speedup']:.2f}x" if r["speedup"] == r["speedup"] else "-", r["floor"])
                           for r in rows]))
    common.write_json(a.json, rows, dev, benchmark="scan", baseline="mamba_ssm" if base else None,
                      copy_bandwidth=bw)
    return rows


def bidir(shp, dev, dt, a, base, add):
    """Fused bidirectional scan against two mamba_ssm calls with flips (Caduceus' BiMamba)."""
    import torch

    b, D, N, L = shp
    xf, xr = make_inputs(shp, dev, dt, seed=1), make_inputs(shp, dev, dt, seed=2)
    g = torch.randn(b, L, D, device=dev).to(dt)
    fr, rr = req(xf), req(xr)
    rr["z"] = fr["z"]
    keys = [fr[k] for k in KEYS] + [rr[k] for k in KEYS if k != "z"]
    T = lambda fn: common.time_ms(fn, dev, 300, a.quick)  # noqa: E731
    t_f = T(lambda: ours_bi(xf, xr, a.backend))
    t_fb = T(lambda: torch.autograd.grad(ours_bi(fr, rr, a.backend), keys, g))
    t_mf = t_mfb = float("nan")
    if base is not None:
        mf, mr = to_mamba(xf), to_mamba(xr)

        def two_calls(f, r):
            yf = base(f["u"], f["delta"], f["A"], f["B"], f["C"], f["D"], f["z"], f["bias"], delta_softplus=True)
            yr = base(r["u"].flip(-1), r["delta"].flip(-1), r["A"], r["B"].flip(-1), r["C"].flip(-1), r["D"],
                      f["z"].flip(-1), r["bias"], delta_softplus=True).flip(-1)
            return yf + yr

        y1, y2 = ours_bi(xf, xr, a.backend), two_calls(mf, mr)
        print(f"bidir check vs 2x mamba_ssm {shp}: y={rel(y1, y2.transpose(1, 2)):.1e}")
        mfr, mrr = req(mf), req(mr)
        mkeys = [mfr[k] for k in KEYS] + [mrr[k] for k in KEYS if k != "z"]
        gm = g.transpose(1, 2).contiguous()
        t_mf = T(lambda: two_calls(mf, mr))
        t_mfb = T(lambda: torch.autograd.grad(two_calls(mfr, mrr), mkeys, gm))
    add(shp, "bidirectional fwd", t_f, t_mf, floor_bytes(b, D, N, L, "fwd", True))
    add(shp, "bidirectional fwd+bwd", t_fb, t_mfb, floor_bytes(b, D, N, L, "fwd+bwd", True))


def profile(shape, dev, dt, backend):
    """Per-kernel device time of one forward+backward (torch.profiler, 3 iterations)."""
    import torch
    from torch.profiler import ProfilerActivity, profile as tprof

    b, D, N, L = shape
    x = req(make_inputs(shape, dev, dt))
    g = torch.randn(b, L, D, device=dev).to(dt)
    step = lambda: torch.autograd.grad(ours(x, backend), [x[k] for k in KEYS], g)  # noqa: E731
    step()
    common.sync(dev)
    acts = [ProfilerActivity.CUDA] if dev.type == "cuda" else [ProfilerActivity.CPU]
    with tprof(activities=acts) as prof:
        for _ in range(3):
            step()
        common.sync(dev)
    key = "cuda_time_total" if dev.type == "cuda" else "cpu_time_total"
    print(f"profile {shape} (3 x fwd+bwd):")
    print(prof.key_averages().table(sort_by=key, row_limit=12, max_name_column_width=40))


if __name__ == "__main__":
    main()
