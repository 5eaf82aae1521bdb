"""A Caduceus model run by Caduceus' own code (mamba_ssm's CUDA kernels) and by mambadna after
`mambadna.load(caduceus_folder)`: agreement of the logits, then inference and training-step speed
side by side.

The model is made by Caduceus' code (../shared/baselines/caduceus, `CaduceusForMaskedLM`) with the
numerics of the released checkpoints (`fused_add_norm`, `residual_in_fp32`, bidirectional "add",
tied directions, RCPS for PS), written with `save_pretrained`, and read back by mambadna through the
in-memory conversion. Rows: max |difference| / max |reference| of the logits (fp32 and bf16 autocast
against Caduceus fp32, and Caduceus' own bf16 against its fp32 for scale), then median ms of an
inference forward (no grad) and of a masked-LM training step (fwd+bwd) in bf16 autocast, the speed-up
and peak memory.

    python benchmarks/run.py caduceus      # GPU: mamba_ssm built (gpu.sh), transformers 4.46 + einops
    python benchmarks/bench_caduceus.py --device cpu --quick   # script check: mamba_ssm's CUDA ops routed
                                                               # to its PyTorch references (sources unpacked)
"""
from __future__ import annotations

import os
import sys
import tarfile
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

# Caduceus character ids: A7 C8 G9 T10 N11; complement map over the padded 16-row vocabulary
COMPLEMENT = {**{i: i for i in range(16)}, 7: 10, 10: 7, 8: 9, 9: 8}


def _reference_ops(tmp: Path) -> None:
    """No CUDA build: mamba_ssm from its unpacked sdist, its fused ops routed to its own references
    as the test suite does (tests/caduceus_reference.py)."""
    import importlib.util

    tarball = sorted(common.baselines_dir().glob("mamba_ssm-*.tar.gz"))[-1]
    with tarfile.open(tarball) as tf:
        tf.extractall(tmp / "src", filter="data")
    os.environ.setdefault("MAMBADNA_BASELINES", str(common.baselines_dir()))
    spec = importlib.util.spec_from_file_location("caduceus_reference", common.REPO / "tests" / "caduceus_reference.py")
    helper = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helper)
    helper._patch(str(next((tmp / "src").glob("mamba_ssm-*"))))


def make_caduceus(folder: Path, *, rcps: bool, d_model: int, n_layer: int, dev, seed: int = 0):
    """CaduceusForMaskedLM with released-checkpoint numerics, weights moved off their init, saved."""
    import torch
    from caduceus.configuration_caduceus import CaduceusConfig
    from caduceus.modeling_caduceus import CaduceusForMaskedLM

    torch.manual_seed(seed)
    cfg = CaduceusConfig(d_model=d_model, n_layer=n_layer, vocab_size=12, rms_norm=True,
                         ssm_cfg={"d_state": 16, "d_conv": 4, "expand": 2}, residual_in_fp32=True,
                         fused_add_norm=True, pad_vocab_size_multiple=8, bidirectional=True,
                         bidirectional_strategy="add", bidirectional_weight_tie=True, rcps=rcps,
                         complement_map=COMPLEMENT)
    model = CaduceusForMaskedLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    model.save_pretrained(folder, safe_serialization=False)  # tied tensors: pytorch_model.bin, as released
    return model.to(dev)


def main(argv=None) -> int:
    ap = common.parser(__doc__)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--n-layers", type=int, default=16)
    ap.add_argument("--variants", default="ph,ps", help="ph (bidirectional) and/or ps (RC-equivariant)")
    ap.add_argument("--shapes", default="8x1024,1x131072", help="batch x length, comma separated")
    ap.add_argument("--rep", type=int, default=200, help="do_bench milliseconds per measurement")
    args = ap.parse_args(argv)
    dev = common.device(args.device)
    tmp = Path(tempfile.mkdtemp(prefix="bench_caduceus_"))
    if args.quick:
        args.d_model, args.n_layers, args.shapes = 32, 2, "2x256"
    try:
        import selective_scan_cuda  # noqa: F401  (the real build)
        ops = "mamba_ssm CUDA"
    except ImportError:
        if dev.type == "cuda":
            print("mamba_ssm's CUDA build is not importable (benchmarks/gpu.sh builds it)", file=sys.stderr)
            return 2
        _reference_ops(tmp)
        ops = "mamba_ssm PyTorch references"
    sys.path.insert(0, str(common.baselines_dir()))
    import torch
    import torch.nn.functional as F

    import mambadna

    print(common.header(dev, f"Caduceus {args.d_model} x {args.n_layers} through {ops}"), flush=True)
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    amp = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda")
    rows, agree = [], []
    for variant in args.variants.split(","):
        folder = tmp / variant
        ref = make_caduceus(folder, rcps=variant == "ps", d_model=args.d_model, n_layer=args.n_layers, dev=dev)
        ours = mambadna.load(folder, device=dev).torch_model
        g = torch.Generator().manual_seed(1)
        ids = torch.randint(7, 11, (2, 1024 if not args.quick else 128), generator=g).to(dev)
        ids[:, ::17] = 3  # [MASK]
        ref.eval()
        ours.eval()
        with torch.no_grad():
            want = ref(input_ids=ids).logits.float()
            scale = want.abs().max()
            got = ours(ids).float()[..., :want.shape[-1]]
            with amp:
                got16 = ours(ids).float()[..., :want.shape[-1]]
                ref16 = ref(input_ids=ids).logits.float()
        agree.append([variant, tuple(ids.shape), f"{((got - want).abs().max() / scale).item():.1e}",
                      f"{((got16 - want).abs().max() / scale).item():.1e}",
                      f"{((ref16 - want).abs().max() / scale).item():.1e}"])
        for b, L in shapes:
            x = torch.randint(7, 11, (b, L), device=dev)
            target = torch.randint(7, 11, (b, L), device=dev)

            def infer(model, is_ref):
                def f():
                    with torch.no_grad(), amp:
                        return ref(input_ids=x).logits if is_ref else model(x)
                return f

            def step(model, is_ref):
                def f():
                    with amp:
                        logits = ref(input_ids=x).logits if is_ref else model(x)
                        loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), target.view(-1))
                    loss.backward()
                return f

            for mode, make in (("inference", infer), ("train step", step)):
                res = {}
                for name, model, is_ref in (("caduceus", ref, True), ("mambadna", ours, False)):
                    model.train(mode == "train step")
                    model.zero_grad(set_to_none=True)
                    common.reset_peak(dev)
                    try:
                        ms = common.time_ms(make(model, is_ref), dev, rep=args.rep, quick=args.quick)
                    except torch.cuda.OutOfMemoryError:
                        ms = float("nan")
                    res[name] = (ms, common.peak_gib(dev))
                    model.zero_grad(set_to_none=True)
                (cm, cg), (mm, mg) = res["caduceus"], res["mambadna"]
                rows.append(dict(variant=variant, mode=mode, batch=b, length=L, caduceus_ms=cm, mambadna_ms=mm,
                                 speedup=cm / mm if mm == mm and cm == cm else float("nan"),
                                 caduceus_gib=cg, mambadna_gib=mg, mtok_s=b * L / mm / 1e3))
                r = rows[-1]
                print(f"{variant} {mode} {b}x{L}: caduceus {cm:.2f} ms, mambadna {mm:.2f} ms ({r['speedup']:.2f}x)",
                      flush=True)
        del ref, ours
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    print("\nLogits, max |diff| / max |Caduceus fp32|:\n")
    print(common.md_table(["variant", "ids", "mambadna fp32", "mambadna bf16", "Caduceus bf16 (scale)"], agree))
    print(f"\n{args.d_model} x {args.n_layers}, bf16 autocast, median ms:\n")
    print(common.md_table(["variant", "mode", "batch x length", "Caduceus ms", "mambadna ms", "speed-up",
                           "mambadna M tok/s", "peak GiB Caduceus / mambadna"],
                          [[r["variant"], r["mode"], f"{r['batch']} x {r['length']}", r["caduceus_ms"],
                            r["mambadna_ms"], f"{r['speedup']:.2f}x", r["mtok_s"],
                            f"{r['caduceus_gib']:.2f} / {r['mambadna_gib']:.2f}"] for r in rows]))
    common.write_json(args.json, rows, dev, agreement=agree, ops=ops)
    return 0


if __name__ == "__main__":
    sys.exit(main())
