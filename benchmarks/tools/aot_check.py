"""Compile the scan, conv and norm kernels for sm_90a on a machine without a GPU (Triton's bundled
ptxas) and print registers, spills and SASS opcode counts per kernel variant.

    python benchmarks/tools/aot_check.py [--config '{"block_d": 16}'] [--kernels bwd,out,state]
Catches what the interpreter accepts but the compiler rejects, before a device call. AOT_SASS_DIR=DIR
also writes each job's SASS there. Compile with the device's Triton version (3.6 on the H100 so far).
"""
import argparse
import collections
import inspect
import json
import os
import re
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from mambadna.kernels.scan import triton as ts

BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
BF16 = ("u_", "de", "B_", "C_", "z_", "g_", "ou", "du", "dd", "dz", "u2", "B2", "C2")


def signature(fn, consts):
    sig = {}
    for name in inspect.signature(fn).parameters:
        if name in consts:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = "*bf16" if name[:2] in BF16 and not name.startswith("dB") and not name.startswith("dC") else "*fp32"
        elif name == "eps":
            sig[name] = "fp32"
        else:
            sig[name] = "i64" if name.startswith("s_") else "i32"
    return sig


def compile_one(kernel, consts, warps, maxnreg=None, name=None):
    fn = kernel.fn
    if kernel in ts._VEC.values() and "SD" in inspect.signature(fn).parameters:
        consts = dict(consts, SD=1)
    sig = signature(fn, consts)
    # as at run time on the big shapes: pointers and sizes/strides divisible by 16
    attrs = {(i,): [["tt.divisibility", 16]] for i, (k, v) in enumerate(sig.items()) if v != "constexpr"}
    src = ASTSource
    if getattr(kernel, "is_gluon", lambda: False)():
        from triton.experimental.gluon._runtime import GluonASTSource as src
    ck = triton.compile(src(kernel, sig, consts, attrs),
                        target=GPUTarget("cuda", 90, 32), options=dict({"num_warps": warps}, **({"maxnreg": maxnreg} if maxnreg else {})))
    ptx = re.sub(r"\.version \d+\.\d+", ".version 8.4", ck.asm["ptx"])
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "k.ptx")
        cub = os.path.join(d, "k.cubin")
        open(p, "w").write(ptx)
        r = subprocess.run([os.path.join(BIN, "ptxas"), "-arch=sm_90a", "-v", p, "-o", cub],
                           capture_output=True, text=True)
        info = " ".join(l.strip() for l in (r.stderr + r.stdout).splitlines()
                        if "registers" in l or "spill" in l or "rror" in l)
        sass = subprocess.run([os.path.join(BIN, "cuobjdump"), "-sass", cub],
                              capture_output=True, text=True).stdout
    if os.environ.get("AOT_SASS_DIR"):
        # one file a job (variants of one kernel would overwrite each other by kernel name)
        open(os.path.join(os.environ["AOT_SASS_DIR"], (name or kernel.fn.__name__) + ".sass"), "w").write(sass)
    ops = collections.Counter()
    for line in sass.splitlines():
        m = re.match(r"\s+/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)", line)
        if m:
            ops[m.group(1).split(".")[0]] += 1
    regs = re.search(r"Used (\d+) registers", info)
    spill = re.search(r"(\d+) bytes spill stores", info)
    return (int(regs.group(1)) if regs else -1, int(spill.group(1)) if spill else -1, ops, info)


def jobs(bd, bd_bwd):
    base = dict(N=16, NP=16, BD=bd, HAS_BIAS=True, SOFTPLUS=True)
    bb = dict(base, BD=bd_bwd)  # the backward kernels (adjoint, checkpoints, gradients)
    F = ts.CONFIG["ckpt"]
    SUB = min(ts.CONFIG["sub"], F)
    out = {
        "bwd": (ts._rows_bwd_kernel, dict(bb, F=F, SUB=SUB, HAS_D=True, HAS_Z=True, REV=False,
                                          DZ=0, HAS_MINIT=True)),
        "out": (ts._rows_out_kernel, dict(base, HAS_D=True, HAS_D2=True, HAS_Z=True, HAS_BIAS2=True,
                                          REV=False, HAS_INIT=True, HAS_INIT2=True, BIDIR=False,
                                          STORE_END=False, SAME_L=True, SAME_BC=True, CK=0)),
        "out_rev": (ts._rows_out_kernel, dict(base, HAS_D=True, HAS_D2=True, HAS_Z=True, HAS_BIAS2=True,
                                              REV=True, HAS_INIT=True, HAS_INIT2=True, BIDIR=False,
                                              STORE_END=False, SAME_L=True, SAME_BC=True, CK=0)),
        "bidir": (ts._rows_out_kernel, dict(base, HAS_D=True, HAS_D2=True, HAS_Z=True, HAS_BIAS2=True,
                                            REV=False, HAS_INIT=True, HAS_INIT2=True, BIDIR=True,
                                            STORE_END=False, SAVE_Y=True, CK=0)),
        "state": (ts._rows_state_kernel, dict(base, DESC=False, ADJ=False, HAS_Z=False, HAS_INIT=False, F=0, SAME_L=True)),
        "adj": (ts._rows_state_kernel, dict(bb, DESC=True, ADJ=True, HAS_Z=True, HAS_INIT=False, F=0, SAME_L=True)),
        "ckpt": (ts._rows_state_kernel, dict(bb, DESC=False, ADJ=False, HAS_Z=False, HAS_INIT=True, F=ts.CONFIG["bwd_fine"] or F,
                                          SAME_L=True)),
    }
    # with gradients to come, the forward also writes the backward's checkpoints (fwd_ckpt_bytes)
    CK = ts.CONFIG["bwd_fine"] or F
    out["out_ck"] = (out["out"][0], dict(out["out"][1], CK=CK))
    out["bidir_ck"] = (out["bidir"][0], dict(out["bidir"][1], CK=CK))
    out["combine"] = (ts._chunk_combine_kernel, dict(N=16, CB=ts.CONFIG["combine_chunks"], BL=ts.CONFIG["combine_lanes"],
                                                     HAS_H0=False, REV=False))
    # batch 1 at 2^20: 32 lanes a program, more chunks a step with combine_tile
    out["combine_b1"] = (ts._chunk_combine_kernel, dict(out["combine"][1], BL=32,
                                                        CB=max(ts.CONFIG["combine_chunks"], ts.CONFIG["combine_tile"] // 32)))
    from mambadna.kernels.conv import triton as tcv
    cb = dict(K=4, BL=tcv.CONFIG["block_l"], BD=tcv.CONFIG["block_d"], HAS_CTX=True, HAS_BIAS=True, REV=False,
              ACT=True)
    out["conv_fwd"] = (tcv._conv_fwd_kernel, cb)
    out["conv_bwd"] = (tcv._conv_bwd_kernel, dict(cb, BL=tcv.CONFIG["bwd_block_l"], BD=tcv.CONFIG["bwd_block_d"]))
    from mambadna.kernels.scan import gluon_bwd as gsb
    if gsb.available():
        out["gbwd"] = (gsb._gluon_bwd_kernel, dict(out["bwd"][1], BD=32,
                                                    MASK_BC=ts.CONFIG["gluon_mask_bc"],
                                                    REUSE=bool(ts.CONFIG["gluon_reuse"]),
                                                    PF=ts.CONFIG["prefetch_bwd"], PFL=ts.CONFIG["prefetch_level"],
                                                    FINE=ts.CONFIG["bwd_fine"], SAME_L=True, SAME_BC=True))
        # a bidirectional backward: dz from the saved pre-gate sum (first direction), none (second)
        out["gbwd_dz1"] = (gsb._gluon_bwd_kernel, dict(out["gbwd"][1], DZ=1))
        out["gbwd_dz2"] = (gsb._gluon_bwd_kernel, dict(out["gbwd"][1], DZ=2, REV=True))
        out["gbwd_strided"] = (gsb._gluon_bwd_kernel, dict(out["gbwd"][1], SAME_L=False, SAME_BC=False))
    from mambadna.kernels.norm import triton as tnm
    nbm, nbd, _ = tnm._geom(1, 256)  # the model's d_model 256
    out["norm_fwd"] = (tnm._rms_fwd_kernel, dict(BM=nbm, BD=nbd))
    out["norm_bwd"] = (tnm._rms_bwd_kernel, dict(BM=nbm, BD=nbd))
    extra = getattr(ts, "AOT_JOBS", None)
    if extra:
        out.update(extra(base))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="")
    ap.add_argument("--kernels", default="")
    ap.add_argument("--maxnreg", type=int, default=0)
    ap.add_argument("--ops", default="MUFU,FFMA,FMUL,FADD,SHFL,LDG,STG,LDL,STL,RED,ATOM,LDS,STS,BAR")
    args = ap.parse_args()
    if args.config:
        ts.CONFIG.update(json.loads(args.config))
    from mambadna.kernels.conv import triton as tcv
    from mambadna.kernels.norm import triton as tnm
    sel = args.kernels.split(",") if args.kernels else None
    for name, (k, c) in jobs(ts.CONFIG["block_d"], ts.CONFIG["block_d_bwd"]).items():
        if sel and name not in sel:
            continue
        if isinstance(k, triton.runtime.jit.JITFunction) and k in ts._VEC:
            k = ts._k(k)
        try:
            warps = (tcv.CONFIG if name.startswith("conv") else tnm.CONFIG if name.startswith("norm")
                     else ts.CONFIG)["bwd_warps" if name == "conv_bwd" else "warps_combine" if name.startswith("combine")
                                     else "warps"]
            regs, spill, ops, info = compile_one(k, c, warps, args.maxnreg or None, name=name)
        except Exception as e:  # noqa: BLE001
            print(f"{name:6s} FAILED {type(e).__name__}: {str(e)[:300]} ... {str(e)[-900:]}")
            continue
        total = sum(ops.values())
        cnt = " ".join(f"{o}={ops[o]}" for o in args.ops.split(","))
        print(f"{name:6s} regs={regs:3d} spill={spill:4d}B sass={total:5d} {cnt}")


if __name__ == "__main__":
    main()
