"""A/B timing of scan kernel variants in one run (development tool, GPU).

    python benchmarks/ab_scan.py --variant head=.variants/scan_h.py \
        --variant new=kernels/triton_scan.py:'{"warps": 2}' [--shapes 0,3] [--bidir]

Each variant is a copy of kernels/triton_scan.py (optionally with a CONFIG update),
loaded as its own module. Per shape: median ms of forward and forward+backward for
each variant, and the largest relative difference of y and of every gradient from
the first variant (a changed kernel must still agree).
"""
import argparse
import importlib.util
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from bench_scan import KEYS, SHAPES, DT, bench, make_inputs, rel, req  # noqa: E402


def load(name, spec):
    path, _, cfg = spec.partition(":")
    mod_name = f"mambadna.kernels._ab_{name}"
    sp = importlib.util.spec_from_file_location(mod_name, path)
    mod = importlib.util.module_from_spec(sp)
    sys.modules[mod_name] = mod
    sp.loader.exec_module(mod)
    if cfg:
        upd = json.loads(cfg)
        unknown = sorted(set(upd) - set(mod.CONFIG))
        if unknown:  # a knob that no longer exists would silently time the default
            raise SystemExit(f"variant {name}: unknown CONFIG keys {unknown}")
        mod.CONFIG.update(upd)
    return mod


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", action="append", required=True, help="name=path[:json]")
    ap.add_argument("--shapes", default="0,1,2,3")
    ap.add_argument("--bidir", action="store_true")
    ap.add_argument("--reverse", action="store_true", help="also time the reverse forward")
    ap.add_argument("--best", default="", help="write the CONFIG update (JSON) of the variant with the "
                    "fastest fwd+bwd at the first shape to this file")
    ap.add_argument("--rep", type=int, default=200)
    args = ap.parse_args()
    mods, cfgs = {}, {}
    for v in args.variant:
        name, _, spec = v.partition("=")
        mods[name] = load(name, spec)
        cfgs[name] = spec.partition(":")[2] or "{}"
    print(f"device {torch.cuda.get_device_name()}; variants {args.variant}", flush=True)
    table = []
    for si in args.shapes.split(","):
        b, D, N, L = SHAPES[int(si)]
        x = make_inputs(b, D, N, L)
        xr = req(x)
        g = torch.randn(b, L, D, device="cuda").to(DT)
        ref = None
        for name, m in mods.items():
            f = lambda: m.selective_scan_triton(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"],  # noqa: E731
                                                x["z"], x["bias"], True)

            def fb():
                y = m.selective_scan_triton(xr["u"], xr["delta"], xr["A"], xr["B"], xr["C"], xr["D"],
                                            xr["z"], xr["bias"], True)
                return (y,) + torch.autograd.grad(y, [xr[k] for k in KEYS], g)
            t0 = time.time()
            try:
                out = fb()
                torch.cuda.synchronize()
                if ref is None:
                    ref = [o.float() for o in out]
                    err = 0.0
                else:
                    err = max(rel(o.float(), r) for o, r in zip(out, ref))
                del out
                tf = bench(f, args.rep)
                tfb = bench(fb, args.rep)
            except Exception as e:  # noqa: BLE001
                print(f"{(b, D, N, L)} {name}: failed {e!r}"[:400], flush=True)
                continue
            table.append(((b, D, N, L), name, tf, tfb, err))
            print(f"{(b, D, N, L)} {name}: fwd {tf:.3f} ms fwd+bwd {tfb:.3f} ms max rel diff {err:.1e} "
                  f"({time.time() - t0:.0f}s)", flush=True)
            if args.reverse:
                fr = lambda: m.selective_scan_triton(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"],  # noqa: E731
                                                     x["z"], x["bias"], True, reverse=True)
                tr = bench(fr, args.rep)
                table.append(((b, D, N, L), name + " reverse", tr, float("nan"), float("nan")))
                print(f"{(b, D, N, L)} {name}: reverse fwd {tr:.3f} ms", flush=True)
        if args.bidir and int(si) in (0, 1):
            xf2 = make_inputs(b, D, N, L, seed=2)
            xr2 = req(xf2)
            for name, m in mods.items():
                fb2 = lambda: m.bidirectional_selective_scan_triton(  # noqa: E731
                    x["u"], x["delta"], x["A"], x["B"], x["C"], xf2["u"], xf2["delta"], xf2["A"],
                    xf2["B"], xf2["C"], x["D"], xf2["D"], x["z"], x["bias"], xf2["bias"], True)

                def fbb():
                    y = m.bidirectional_selective_scan_triton(
                        xr["u"], xr["delta"], xr["A"], xr["B"], xr["C"], xr2["u"], xr2["delta"], xr2["A"],
                        xr2["B"], xr2["C"], xr["D"], xr2["D"], xr["z"], xr["bias"], xr2["bias"], True)
                    return torch.autograd.grad(y, [xr[k] for k in KEYS] + [xr2[k] for k in KEYS if k != "z"], g)
                tb = bench(fb2, args.rep)
                tbb = bench(fbb, max(10, args.rep // 4))
                table.append(((b, D, N, L), name + " bidir", tb, tbb, float("nan")))
                print(f"{(b, D, N, L)} {name}: bidir fwd {tb:.3f} ms fwd+bwd {tbb:.3f} ms", flush=True)
            del xf2, xr2
        del x, xr, g, ref
        torch.cuda.empty_cache()
    print("\n| shape | variant | fwd ms | fwd+bwd ms | max rel diff |\n|---|---|---|---|---|")
    for shp, name, tf, tfb, err in table:
        print(f"| {shp} | {name} | {tf:.3f} | {tfb:.3f} | {err:.1e} |")
    if args.best and table:
        first = table[0][0]
        cand = [(tfb, name) for shp, name, _, tfb, _ in table if shp == first and name in cfgs]
        best = min(cand)[1]
        with open(args.best, "w") as f:
            f.write(cfgs[best])
        print(f"best at {first}: {best} {cfgs[best]}")


if __name__ == "__main__":
    main()
