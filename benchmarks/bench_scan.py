"""Benchmark the Triton selective scan against mamba_ssm's CUDA selective_scan_fn.

    PYTHONPATH=/tmp/mamba_site python3 benchmarks/bench_scan.py [--sweep] [--out DIR]

(mambadna installed, or its kernels/ folder importable as mambadna.kernels.)

bf16 inputs, z gate, fp32 A/D/delta_bias, delta_softplus. mambadna gets its native
channel-last layout (batch, length, d_inner); mamba_ssm its native channel-first
layout (batch, d_inner, length). Prints one table: median ms (triton.testing.do_bench),
ratio mamba_ssm / mambadna, and the fraction of the memory floor (bytes each input
read once and each output written once, over the copy bandwidth measured here).
Also checks mambadna against mamba_ssm (all shapes) and the PyTorch reference (the
smallest shape) on the GPU: relative error of outputs and every gradient.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
import triton
from triton.testing import do_bench

from mambadna.kernels import triton_scan as ts  # noqa: E402
from mambadna.kernels.reference import selective_scan_ref  # noqa: E402

try:
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
except Exception as e:  # pragma: no cover - only on the GPU machine with the baseline
    print("mamba_ssm unavailable:", repr(e))
    selective_scan_fn = None

SHAPES = [(8, 512, 16, 131072), (1, 512, 16, 1 << 20), (16, 1536, 16, 4096), (64, 512, 16, 1024)]
DT = torch.bfloat16
LOG = []


def log(*a):
    s = " ".join(str(x) for x in a)
    print(s, flush=True)
    LOG.append(s)
    out = os.environ.get("OUT")
    if out:  # keep a copy as we go (a run cut off at its time limit still leaves it)
        with open(os.path.join(out, "bench_scan_live.log"), "a") as f:
            f.write(s + "\n")


def rel(a, b):
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def copy_bandwidth():
    x = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")  # 1 GiB
    y = torch.empty_like(x)
    ms = do_bench(lambda: y.copy_(x), warmup=50, rep=300, return_mode="median")
    return 2 * x.numel() / (ms * 1e-3)


def make_inputs(b, D, N, L, seed=0, reverse_set=False):
    g = torch.Generator(device="cuda").manual_seed(seed)
    r = lambda *s: torch.randn(*s, device="cuda", generator=g)  # noqa: E731
    u = r(b, L, D).to(DT)
    delta = (0.5 * r(b, L, D) - 1.0).to(DT)
    z = r(b, L, D).to(DT)
    B = r(b, L, 1, N).to(DT)
    C = r(b, L, 1, N).to(DT)
    A = -torch.exp(0.5 * r(D, N))  # like -exp(A_log)
    Dv = r(D)
    bias = 0.1 * r(D)
    return dict(u=u, delta=delta, A=A, B=B, C=C, D=Dv, z=z, bias=bias)


def to_mamba(x):
    """channel-last -> mamba_ssm's channel-first contiguous layout (not timed)."""
    return dict(u=x["u"].transpose(1, 2).contiguous(), delta=x["delta"].transpose(1, 2).contiguous(),
                z=x["z"].transpose(1, 2).contiguous(),
                B=x["B"].permute(0, 2, 3, 1).contiguous(), C=x["C"].permute(0, 2, 3, 1).contiguous(),
                A=x["A"], D=x["D"], bias=x["bias"])


def ours(x, rev=False):
    return ts.selective_scan_triton(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"],
                                    x["bias"], True, None, False, rev)


def theirs(m):
    return selective_scan_fn(m["u"], m["delta"], m["A"], m["B"], m["C"], m["D"], m["z"],
                             m["bias"], delta_softplus=True)


def reference(x):
    return selective_scan_ref(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"],
                              x["bias"], True)


KEYS = ["u", "delta", "A", "B", "C", "D", "z", "bias"]


def req(x):
    return {k: v.detach().requires_grad_() for k, v in x.items()}


def fwd_bwd(fn, x, g):
    y = fn(x)
    grads = torch.autograd.grad(y, [x[k] for k in KEYS], g)
    return y, grads


def bench(fn, rep):
    torch.cuda.synchronize()
    return do_bench(fn, warmup=max(10, rep // 10), rep=rep, return_mode="median")


def floor_bytes(b, D, N, L, mode, bidir=False):
    bld, bln = b * L * D * 2, b * L * N * 2
    k = 2 if bidir else 1
    if mode == "fwd":
        return k * (2 * bld + 2 * bln) + 2 * bld  # u, delta, B, C per direction; z, y
    return k * (2 * bld + 2 * bln + 2 * bld + 2 * bln) + 4 * bld  # + du, ddelta, dB, dC; z, g, y, dz


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--sweep", action="store_true", help="time kernel configs first")
    ap.add_argument("--config", default="", help="json dict to update triton_scan.CONFIG")
    ap.add_argument("--shapes", default="", help="indices into SHAPES, comma separated")
    ap.add_argument("--skip-bidir", action="store_true")
    ap.add_argument("--profile", action="store_true", help="per-kernel times (torch.profiler)")
    ap.add_argument("--sweep-only", action="store_true")
    ap.add_argument("--profile-only", action="store_true", help="per-kernel times, nothing else")
    args = ap.parse_args()
    if args.config:
        ts.CONFIG.update(json.loads(args.config))
    torch.manual_seed(0)
    dev = torch.cuda.get_device_name()
    bw = copy_bandwidth()
    log(f"device: {dev}; torch {torch.__version__}; triton {triton.__version__}; "
        f"copy bandwidth {bw / 1e12:.2f} TB/s; CONFIG {json.dumps(ts.CONFIG)}")
    shapes = SHAPES if not args.shapes else [SHAPES[int(i)] for i in args.shapes.split(",")]

    if args.profile_only:
        for shp in shapes:
            profile(shp)
        return
    if args.sweep or args.sweep_only:
        sweep(shapes)
        with open(os.path.join(args.out, "best_config.json"), "w") as f:
            json.dump(ts.CONFIG, f)
    if args.profile:
        for shp in shapes[:2]:
            profile(shp)
    if args.sweep_only:
        return

    rows = []
    for (b, D, N, L) in shapes:
        x = make_inputs(b, D, N, L)
        rep = 400 if b * L * D > 1e8 else 200
        g = torch.randn(b, L, D, device="cuda").to(DT)
        # ---- correctness on this shape
        xr = req(x)
        y1, g1 = fwd_bwd(ours, xr, g)
        if selective_scan_fn is not None:
            m = req(to_mamba(x))
            y2 = theirs(m)
            g2 = torch.autograd.grad(y2, [m[k] for k in KEYS], g.transpose(1, 2).contiguous())
            errs = {"y": rel(y1, y2.transpose(1, 2))}
            back = {"u": lambda t: t.transpose(1, 2), "delta": lambda t: t.transpose(1, 2),
                    "z": lambda t: t.transpose(1, 2), "B": lambda t: t.permute(0, 3, 1, 2),
                    "C": lambda t: t.permute(0, 3, 1, 2)}
            for k, a, c in zip(KEYS, g1, g2):
                errs[k] = rel(a, back.get(k, lambda t: t)(c))
            log(f"check vs mamba_ssm {(b, D, N, L)}: " + " ".join(f"{k}={v:.1e}" for k, v in errs.items()))
            del m, y2, g2
        if b * L * D <= 64 * 1024 * 512:
            xr2 = req(x)
            y3, g3 = fwd_bwd(reference, xr2, g)
            errs = {"y": rel(y1, y3)}
            for k, a, c in zip(KEYS, g1, g3):
                errs[k] = rel(a, c)
            log(f"check vs reference {(b, D, N, L)}: " + " ".join(f"{k}={v:.1e}" for k, v in errs.items()))
            del y3, g3
        del y1, g1
        torch.cuda.empty_cache()
        # ---- timing
        xr = req(x)
        t_f = bench(lambda: ours(x), rep)
        t_fb = bench(lambda: fwd_bwd(ours, xr, g), rep)
        t_mf = t_mfb = float("nan")
        if selective_scan_fn is not None:
            m = to_mamba(x)
            mr = req(m)
            gm = g.transpose(1, 2).contiguous()
            t_mf = bench(lambda: theirs(m), rep)
            t_mfb = bench(lambda: torch.autograd.grad(theirs(mr), [mr[k] for k in KEYS], gm), rep)
            del m, mr, gm
        for mode, t, tm in (("fwd", t_f, t_mf), ("fwd+bwd", t_fb, t_mfb)):
            fl = floor_bytes(b, D, N, L, mode) / bw * 1e3
            rows.append(((b, D, N, L), "causal " + mode, t, tm, tm / t, fl / t))
            log(f"{(b, D, N, L)} {mode}: mambadna {t:.3f} ms  mamba_ssm {tm:.3f} ms  "
                f"x{tm / t:.2f}  floor {fl:.3f} ms ({fl / t:.0%})")
        if b * L * D <= 64 * 1024 * 512:
            xr2 = req(x)
            t_rf = bench(lambda: reference(x), 200)
            t_rfb = bench(lambda: fwd_bwd(reference, xr2, g), 200)
            rows.append(((b, D, N, L), "pytorch ref fwd", t_rf, t_mf, t_mf / t_rf, float("nan")))
            rows.append(((b, D, N, L), "pytorch ref fwd+bwd", t_rfb, t_mfb, t_mfb / t_rfb, float("nan")))
            log(f"reference {(b, D, N, L)}: fwd {t_rf:.2f} ms fwd+bwd {t_rfb:.2f} ms")
        # reverse mode (no flip copies) on the same shape, forward only
        t_rev = bench(lambda: ours(x, rev=True), rep)
        rows.append(((b, D, N, L), "reverse fwd", t_rev, t_mf, t_mf / t_rev,
                     floor_bytes(b, D, N, L, "fwd") / bw * 1e3 / t_rev))
        del x, xr, g
        torch.cuda.empty_cache()

    if not args.skip_bidir:
        for (b, D, N, L) in [s for s in shapes if s[0] * s[3] <= 8 * 131072][:2]:
            rows += bidir(b, D, N, L, bw)

    log("")
    log("| shape (B, D, N, L) | mode | mambadna ms | mamba_ssm ms | speed-up | floor fraction |")
    log("|---|---|---|---|---|---|")
    for shp, mode, t, tm, ratio, ff in rows:
        log(f"| {shp} | {mode} | {t:.3f} | {tm:.3f} | {ratio:.2f}x | {ff:.0%} |")
    with open(os.path.join(args.out, "bench_scan.log"), "w") as f:
        f.write("\n".join(LOG) + "\n")


def bidir(b, D, N, L, bw):
    xf = make_inputs(b, D, N, L, seed=1)
    xr = make_inputs(b, D, N, L, seed=2)
    z = xf["z"]
    g = torch.randn(b, L, D, device="cuda").to(DT)

    def ours_bi(f, r):
        return ts.bidirectional_selective_scan_triton(
            f["u"], f["delta"], f["A"], f["B"], f["C"], r["u"], r["delta"], r["A"], r["B"],
            r["C"], f["D"], r["D"], f["z"], f["bias"], r["bias"], True)

    fr, rr = req(xf), req(xr)
    rr["z"] = fr["z"]
    keys = [(fr, k) for k in KEYS] + [(rr, k) for k in KEYS if k != "z"]

    def ours_bi_fb():
        y = ours_bi(fr, rr)
        return torch.autograd.grad(y, [d[k] for d, k in keys], g)

    rows = []
    t_f = bench(lambda: ours_bi(xf, xr), 300)
    t_fb = bench(ours_bi_fb, 300)
    t_mf = t_mfb = float("nan")
    if selective_scan_fn is not None:
        mf, mr = to_mamba(xf), to_mamba(xr)

        def two_calls(mf, mr):
            # Caduceus: the reverse branch sees flipped inputs and its output is flipped back
            yf = selective_scan_fn(mf["u"], mf["delta"], mf["A"], mf["B"], mf["C"], mf["D"], mf["z"],
                                   mf["bias"], delta_softplus=True)
            yr = selective_scan_fn(mr["u"].flip(-1), mr["delta"].flip(-1), mr["A"],
                                   mr["B"].flip(-1), mr["C"].flip(-1), mr["D"], mf["z"].flip(-1),
                                   mr["bias"], delta_softplus=True).flip(-1)
            return yf + yr

        # correctness of the fused kernel against the two mamba_ssm calls
        y1 = ours_bi(xf, xr)
        y2 = two_calls(mf, mr)
        log(f"bidir check vs 2x mamba_ssm {(b, D, N, L)}: y={rel(y1, y2.transpose(1, 2)):.1e}")
        mfr, mrr = req(mf), req(mr)
        mkeys = [(mfr, k) for k in KEYS] + [(mrr, k) for k in KEYS if k != "z"]
        gm = g.transpose(1, 2).contiguous()
        t_mf = bench(lambda: two_calls(mf, mr), 300)
        t_mfb = bench(lambda: torch.autograd.grad(two_calls(mfr, mrr), [d[k] for d, k in mkeys], gm), 300)
    for mode, t, tm in (("fwd", t_f, t_mf), ("fwd+bwd", t_fb, t_mfb)):
        fl = floor_bytes(b, D, N, L, mode, bidir=True) / bw * 1e3
        rows.append(((b, D, N, L), "bidirectional " + mode, t, tm, tm / t, fl / t))
        log(f"bidir {(b, D, N, L)} {mode}: fused {t:.3f} ms  2x mamba_ssm+flips {tm:.3f} ms  x{tm / t:.2f}")
    return rows


SWEEP = [dict(seg=128), dict(seg=128, sub=2), dict(seg=64), dict(seg=128, vec=True),
         dict(seg=128, block_d=64, warps=2)]


def sweep(shapes):
    """Time kernel configs (ts.CONFIG updates, --sweep-config or SWEEP) at every shape
    (no mamba_ssm needed); keep the config with the lowest sum over shapes of
    (fwd+bwd ms / first config's fwd+bwd ms)."""
    base = dict(ts.CONFIG)
    cands = SWEEP
    data = {}
    for (b, D, N, L) in shapes:
        x = make_inputs(b, D, N, L)
        xr = req(x)
        g = torch.randn(b, L, D, device="cuda").to(DT)
        for i, c in enumerate(cands):
            ts.CONFIG.clear()
            ts.CONFIG.update(base)
            ts.CONFIG.update(c)
            try:
                t0 = time.time()
                t_f = bench(lambda: ours(x), 100)
                t_fb = bench(lambda: fwd_bwd(ours, xr, g), 100)
                data[(i, (b, D, N, L))] = (t_f, t_fb)
                log(f"  sweep {(b, D, N, L)} {c}: fwd {t_f:.3f} ms fwd+bwd {t_fb:.3f} ms "
                    f"({time.time() - t0:.0f}s)")
            except Exception as e:  # noqa: BLE001
                log(f"  sweep {(b, D, N, L)} {c}: failed {e!r}"[:300])
        del x, xr, g
        torch.cuda.empty_cache()
    score = {}
    for i in range(len(cands)):
        try:
            score[i] = sum(data[(i, s)][1] / data[(0, s)][1] for s in shapes)
        except KeyError:
            pass
    best = min(score, key=score.get)
    log(f"sweep scores (fwd+bwd vs first): {score}; best {cands[best]}")
    ts.CONFIG.clear()
    ts.CONFIG.update(base)
    ts.CONFIG.update(cands[best])
    log(f"using CONFIG {json.dumps(ts.CONFIG)}")


def profile(shape):
    """Per-kernel device time of one forward+backward (torch.profiler, 3 iterations)."""
    b, D, N, L = shape
    x = make_inputs(b, D, N, L)
    xr = req(x)
    g = torch.randn(b, L, D, device="cuda").to(DT)
    fwd_bwd(ours, xr, g)
    torch.cuda.synchronize()
    from torch.profiler import ProfilerActivity, profile as tprof
    with tprof(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            fwd_bwd(ours, xr, g)
        torch.cuda.synchronize()
    log(f"profile {shape} (3 x fwd+bwd):")
    log(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12, max_name_column_width=40))
    del x, xr, g
    torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
