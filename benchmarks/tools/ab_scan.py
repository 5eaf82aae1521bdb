"""A/B of Triton scan variants in one process, interleaved per shape (kernel development, GPU).

    python benchmarks/tools/ab_scan.py --variant base={} --variant seg256='{"seg": 256}' [--shapes 0,3] [--bidir]
    python benchmarks/tools/ab_scan.py --variant new=/tmp/triton_new.py --variant old=/tmp/triton_old.py

A variant is NAME=JSON (ScanTuning fields of the current kernels/scan/triton.py) or NAME=PATH[:JSON]
(a copy of that file, e.g. `git show REV:kernels/scan/triton.py > /tmp/old.py`), each loaded as its
own module inside mambadna.kernels.scan (so its relative imports resolve). Per shape: median ms of
forward and forward+backward of each variant, and the largest relative difference of y and every
gradient from the first variant (a changed kernel must still agree). For whole revisions of the
library use `benchmarks/run.py scan --compare REV`. On CPU (--device cpu) it runs the Triton
interpreter: a check of the variants, not a timing.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # noqa: E402


def load(name, spec, default_path):
    path, cfg = (default_path, spec) if spec.lstrip().startswith("{") else (spec.partition(":")[0], spec.partition(":")[2])
    mod_name = f"mambadna.kernels.scan._ab_{name}"
    sp = importlib.util.spec_from_file_location(mod_name, path)
    mod = importlib.util.module_from_spec(sp)
    sys.modules[mod_name] = mod
    sp.loader.exec_module(mod)
    if cfg:
        upd = json.loads(cfg)
        if hasattr(mod, "ScanTuning"):  # the variant's own tuning, for the rest of the process
            known = {f.name for f in dataclasses.fields(mod.ScanTuning)}
            if set(upd) - known:  # a knob that no longer exists would silently time the default
                raise SystemExit(f"variant {name}: unknown ScanTuning fields {sorted(set(upd) - known)}")
            _SCOPE.enter_context(mod.use_tuning(**upd))
        else:  # revisions before ScanTuning
            mod.CONFIG.update(upd)
    return mod, cfg or "{}"


_SCOPE = contextlib.ExitStack()


def main(argv=None):
    ap = common.parser(__doc__)
    ap.add_argument("--variant", action="append", required=True, help="NAME=JSON or NAME=PATH[:JSON]")
    ap.add_argument("--shapes", default="0,1,2,3", help="indices into bench_scan.SHAPES (QUICK_SHAPES with --quick)")
    ap.add_argument("--bidir", action="store_true", help="also the fused bidirectional scan (first two shapes)")
    ap.add_argument("--reverse", action="store_true", help="also the reverse forward")
    ap.add_argument("--rep", type=int, default=200)
    a = ap.parse_args(argv)
    if a.device == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported

    import torch
    from bench_scan import KEYS, QUICK_SHAPES, SHAPES, make_inputs, rel, req, scan_internals

    dev = common.device(a.device)
    dt = torch.bfloat16 if dev.type == "cuda" else torch.float32
    default_path = scan_internals().__file__
    mods = {}
    for v in a.variant:
        name, _, spec = v.partition("=")
        mods[name] = load(name, spec, default_path)
    print(common.header(dev, "variants " + "; ".join(f"{n}={c}" for n, (_, c) in mods.items())), flush=True)
    table = []
    pool = QUICK_SHAPES if a.quick else SHAPES
    T = lambda fn: common.time_ms(fn, dev, a.rep, a.quick)  # noqa: E731
    for si in a.shapes.split(","):
        if int(si) >= len(pool):
            continue
        shp = pool[int(si)]
        b, D, N, L = shp
        x = make_inputs(shp, dev, dt)
        xr = req(x)
        g = torch.randn(b, L, D, device=dev).to(dt)
        ref = None
        for name, (m, _) in mods.items():
            f = lambda m=m: m.selective_scan_triton(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"],  # noqa: E731
                                                    x["z"], x["bias"], True)

            def fb(m=m):
                y = m.selective_scan_triton(xr["u"], xr["delta"], xr["A"], xr["B"], xr["C"], xr["D"],
                                            xr["z"], xr["bias"], True)
                return (y,) + torch.autograd.grad(y, [xr[k] for k in KEYS], g)
            t0 = time.time()
            try:
                out = fb()
                common.sync(dev)
                if ref is None:
                    ref, err = [o.float() for o in out], 0.0
                else:
                    err = max(rel(o.float(), r) for o, r in zip(out, ref))
                del out
                tf, tfb = T(f), T(fb)
            except Exception as e:  # noqa: BLE001
                print(f"{shp} {name}: failed {e!r}"[:400], flush=True)
                continue
            table.append((str(shp), name, tf, tfb, err))
            print(f"{shp} {name}: fwd {tf:.3f} ms fwd+bwd {tfb:.3f} ms max rel diff {err:.1e} "
                  f"({time.time() - t0:.0f}s)", flush=True)
            if a.reverse:
                tr = T(lambda m=m: m.selective_scan_triton(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"],
                                                           x["z"], x["bias"], True, reverse=True))
                table.append((str(shp), name + " reverse", tr, float("nan"), float("nan")))
        if a.bidir and int(si) in (0, 1):
            x2 = make_inputs(shp, dev, dt, seed=2)
            xr2 = req(x2)
            for name, (m, _) in mods.items():
                bi = lambda p, q, m=m: m.bidirectional_selective_scan_triton(  # noqa: E731
                    p["u"], p["delta"], p["A"], p["B"], p["C"], q["u"], q["delta"], q["A"], q["B"], q["C"],
                    p["D"], q["D"], p["z"], p["bias"], q["bias"], True)
                keys = [xr[k] for k in KEYS] + [xr2[k] for k in KEYS if k != "z"]
                tb = T(lambda: bi(x, x2))
                tbb = T(lambda: torch.autograd.grad(bi(xr, xr2), keys, g))
                table.append((str(shp), name + " bidir", tb, tbb, float("nan")))
                print(f"{shp} {name}: bidir fwd {tb:.3f} ms fwd+bwd {tbb:.3f} ms", flush=True)
        x = xr = g = ref = None  # free before the next shape
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    print()
    print(common.md_table(["shape", "variant", "fwd ms", "fwd+bwd ms", "max rel diff"],
                          [(s, n, tf, tfb, "-" if e != e else f"{e:.1e}") for s, n, tf, tfb, e in table]))
    rows = [dict(shape=s, variant=n, fwd_ms=tf, fwd_bwd_ms=tfb, max_rel_diff=e) for s, n, tf, tfb, e in table]
    common.write_json(a.json, rows, dev, benchmark="ab_scan", variants={n: c for n, (_, c) in mods.items()})


if __name__ == "__main__":
    main()
