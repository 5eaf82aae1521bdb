"""Forward+backward throughput and peak memory of the 16 x 256 bidirectional model (issue 4).

One run, side by side on one GPU (bf16 autocast, MLM-style loss over all positions):
  1. mambadna (fused BiMamba layer: shared in_proj, both convs, fused bidirectional
     Triton scan, one out_proj);
  2. the same architecture built the way Caduceus builds it, from mamba_ssm `Mamba`
     modules: two mixers per layer, the second on the flipped sequence, in/out
     projections tied, per-layer checkpointing where needed to fit;
  3. a Transformer encoder of the same width (PyTorch SDPA / flash), where it fits;
and a table of mambadna tokens/s and peak memory against length (plot beside --json).
Ratios: mambadna tokens/s over the best mamba_ssm variant's at the same length.

    python benchmarks/run.py pretrain -- --long-chunks 524288,262144   # GPU, mamba_ssm importable
    python benchmarks/bench_pretrain.py --device cpu --quick           # tiny CPU check of the script
"""
from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


class _Norm(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.w = nn.Parameter(torch.ones(d))

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-5) * self.w).to(x.dtype)


class CaduceusStyle(nn.Module):
    """BiMamba from two mamba_ssm Mamba mixers per layer, second on the flipped input."""

    def __init__(self, d_model=256, n_layers=16, vocab=12, ckpt=False):
        super().__init__()
        from mamba_ssm.modules.mamba_simple import Mamba

        self.emb = nn.Embedding(vocab, d_model)
        self.norms = nn.ModuleList(_Norm(d_model) for _ in range(n_layers))
        self.fwd = nn.ModuleList(Mamba(d_model, d_state=16, d_conv=4, expand=2) for _ in range(n_layers))
        self.rev = nn.ModuleList(Mamba(d_model, d_state=16, d_conv=4, expand=2) for _ in range(n_layers))
        for f, r in zip(self.fwd, self.rev):
            r.in_proj.weight = f.in_proj.weight
            r.out_proj.weight = f.out_proj.weight
        self.norm_f = _Norm(d_model)
        self.ckpt = ckpt

    def _layer(self, i, h):
        x = self.norms[i](h)
        return h + self.fwd[i](x) + self.rev[i](x.flip(1)).flip(1)

    def forward(self, ids):
        h = self.emb(ids)
        for i in range(len(self.fwd)):
            h = checkpoint(self._layer, i, h, use_reentrant=False) if self.ckpt else self._layer(i, h)
        return F.linear(self.norm_f(h), self.emb.weight)


class TransformerEncoder(nn.Module):
    """Pre-norm Transformer encoder (non-causal) with F.scaled_dot_product_attention."""

    def __init__(self, d_model=256, n_layers=16, n_heads=4, vocab=12, ckpt=False):
        super().__init__()
        self.emb = nn.Embedding(vocab, d_model)
        self.h = n_heads
        self.qkv = nn.ModuleList(nn.Linear(d_model, 3 * d_model, bias=False) for _ in range(n_layers))
        self.proj = nn.ModuleList(nn.Linear(d_model, d_model, bias=False) for _ in range(n_layers))
        self.mlp = nn.ModuleList(nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(),
                                               nn.Linear(4 * d_model, d_model)) for _ in range(n_layers))
        self.n1 = nn.ModuleList(_Norm(d_model) for _ in range(n_layers))
        self.n2 = nn.ModuleList(_Norm(d_model) for _ in range(n_layers))
        self.norm_f = _Norm(d_model)
        self.ckpt = ckpt

    def _layer(self, i, x):
        b, L, d = x.shape
        q, k, v = self.qkv[i](self.n1[i](x)).view(b, L, 3, self.h, d // self.h).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, L, d)
        x = x + self.proj[i](a)
        return x + self.mlp[i](self.n2[i](x))

    def forward(self, ids):
        h = self.emb(ids)
        for i in range(len(self.qkv)):
            h = checkpoint(self._layer, i, h, use_reentrant=False) if self.ckpt else self._layer(i, h)
        return F.linear(self.norm_f(h), self.emb.weight)


def mambadna_model(d_model, n_layers, ckpt, residual_bf16=False, layer_chunk=0):
    return common.build_model(d_model, n_layers, checkpoint=ckpt, layer_chunk=layer_chunk,
                              residual_bf16=residual_bf16)


def time_step(model, B, L, device, reps, amp):
    """Median seconds of one fwd+bwd (+ no optimizer) and peak memory in GiB."""
    model.to(device).train()
    ids = torch.randint(7, 11, (B, L), device=device)
    labels = torch.randint(7, 11, (B, L), device=device)
    ts = []
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    for r in range(reps + 1):
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(ids)
        loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), labels.view(-1))
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if r:
            ts.append(time.perf_counter() - t)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return statistics.median(ts), peak


def run(name, make, B, L, device, reps, amp, rows, note=""):
    try:
        torch.manual_seed(0)
        model = make()
        s, peak = time_step(model, B, L, device, reps, amp)
        rows.append(dict(model=name, batch=B, length=L, ms=s * 1e3, tokens_per_s=B * L / s, peak_gib=peak, note=note))
    except torch.cuda.OutOfMemoryError:
        rows.append(dict(model=name, batch=B, length=L, ms=float("nan"), tokens_per_s=float("nan"),
                         peak_gib=float("nan"), note=note, status="out of memory"))
    finally:
        model = None  # noqa: F841
        if device.type == "cuda":
            torch.cuda.empty_cache()
    r = rows[-1]
    print(f"  {r['model']:<34} {r['batch']:>4} x {r['length']:>8}: {r['ms']:9.1f} ms  "
          f"{r['tokens_per_s'] / 1e6:7.3f} M tok/s  {r['peak_gib']:6.2f} GiB  {r['note']} {r.get('status', '')}",
          flush=True)


def main(argv=None):
    ap = common.parser(__doc__)
    ap.add_argument("--smoke", action="store_true", help="alias of --device cpu --quick")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--skip-baselines", action="store_true")
    ap.add_argument("--long-chunks", default="", help="layer chunks to time at 2^20 (default L/8,L/4)")
    ap.add_argument("--only-long", action="store_true", help="only the 2^20 side-by-side rows")
    ap.add_argument("--scan-config", default="", help="JSON: ScanTuning fields and fwd/bwd saved-state bounds (bench_scan.apply_config)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.device, args.quick = "cpu", True
    if args.scan_config:
        from bench_scan import apply_config

        apply_config(args.scan_config)
    device = common.device(args.device)
    small = args.quick
    reps = 1 if small else args.reps
    amp = device.type == "cuda"
    d, n = (256, 16) if not small else (16, 2)
    long_len = 2**20 if not small else 256
    mid_len = 131072 if not small else 128
    rows: list = []
    print(common.header(device, f"model {n} x {d} bidirectional, bf16 autocast {amp}, median of {reps}"))
    have_mamba = False
    if not (small or args.skip_baselines) and device.type == "cuda":
        try:
            import mamba_ssm  # noqa: F401

            have_mamba = True
        except Exception as e:  # noqa: BLE001
            print(f"# baseline: mamba_ssm not importable ({e}); skipped")
    if have_mamba:
        print("# baseline: mamba_ssm Caduceus-style build (two Mamba mixers a layer, tied projections)")

    print("## side by side, fwd+bwd")
    for L in ((long_len,) if args.only_long else (mid_len, long_len)):
        ck = L >= long_len
        run("mambadna", lambda: mambadna_model(d, n, ckpt=ck), 1, L, device, reps, amp, rows,
            "per-layer ckpt" if ck else "")
        if amp:
            run("mambadna (bf16 residual)", lambda: mambadna_model(d, n, ckpt=ck, residual_bf16=True), 1, L,
                device, reps, amp, rows, "per-layer ckpt" if ck else "--residual-bf16")
        chunks = [int(c) for c in args.long_chunks.split(",")] if args.long_chunks else \
            ([L // 4] if small else [L // 8, L // 4])
        for lc in (chunks if ck else (L // 8,)):
            run("mambadna (layer chunk, bf16 residual)",
                lambda: mambadna_model(d, n, ckpt=False, residual_bf16=amp, layer_chunk=lc), 1, L, device,
                reps, amp, rows, f"--layer-chunk {lc} --residual-bf16")
        if have_mamba:
            run("mamba_ssm Caduceus-style", lambda: CaduceusStyle(d, n, ckpt=ck), 1, L, device, reps, amp,
                rows, "per-layer ckpt" if ck else "")
            if not ck:
                run("mamba_ssm Caduceus-style", lambda: CaduceusStyle(d, n, ckpt=True), 1, L, device, reps,
                    amp, rows, "per-layer ckpt")
    trans_lens = () if args.only_long else ((1024, 8192, 65536, 131072) if not small else (64,))
    tokens = 65536 if not small else 128
    for L in trans_lens:
        run("Transformer SDPA", lambda: TransformerEncoder(d, n, ckpt=L >= 65536), max(1, tokens // L), L, device,
            1 if L > 8192 else reps, amp, rows, "per-layer ckpt" if L >= 65536 else "")
    if trans_lens:
        print("  Transformer SDPA at 2^20: not run (quadratic: ~64x the 131k time per token)")

    print("## mambadna against length (constant tokens per step)")
    lens = () if args.only_long else ((1024, 8192, 65536, 131072, 2**20) if not small else (32, 128))
    scale_rows: list = []
    for L in lens:
        run("mambadna", lambda: mambadna_model(d, n, ckpt=L >= long_len), max(1, tokens // L), L, device, reps,
            amp, scale_rows, "per-layer ckpt" if L >= long_len else "")

    def table(rs):
        return common.md_table(["model", "batch x length", "ms / step", "M tokens/s", "peak GiB", "note"],
                               [(r["model"], f"{r['batch']} x {r['length']}", f"{r['ms']:.1f}",
                                 r["tokens_per_s"] / 1e6, f"{r['peak_gib']:.2f}", r["note"]) for r in rs])

    print("\n### side by side\n" + table(rows))
    for L in (mid_len, long_len):
        base = [r for r in rows if r["model"].startswith("mamba_ssm") and r["length"] == L
                and r["tokens_per_s"] == r["tokens_per_s"]]
        if not base:
            continue
        best = max(base, key=lambda r: r["tokens_per_s"])
        for r in rows:
            if r["model"].startswith("mambadna") and r["length"] == L:
                r["ratio"] = r["tokens_per_s"] / best["tokens_per_s"]
                print(f"ratio {r['model']} {r['note']} / mamba_ssm Caduceus-style (best of its variants) at {L}: "
                      f"{r['ratio']:.2f}x  (peak {r['peak_gib']:.1f} vs {best['peak_gib']:.1f} GiB)")
    print("\n### mambadna against length\n" + table(scale_rows))
    for r in rows:
        r["table"] = "side by side"
    for r in scale_rows:
        r["table"] = "against length"
    common.write_json(args.json, rows + scale_rows, device, benchmark="pretrain",
                      baseline="mamba_ssm Caduceus-style" if have_mamba else None)
    if args.json and scale_rows:
        plot(scale_rows, common.device_name(device), Path(args.json).with_suffix(".png"))
    return rows + scale_rows


def plot(scale_rows, dev_name, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(1, 2, figsize=(9, 3.5), dpi=120)
        xs = [r["length"] for r in scale_rows]
        ax[0].semilogx(xs, [r["tokens_per_s"] / 1e6 for r in scale_rows], "o-", base=2)
        ax[0].set_xlabel("length (bases)")
        ax[0].set_ylabel("M tokens/s (fwd+bwd)")
        ax[1].loglog(xs, [r["peak_gib"] for r in scale_rows], "o-", base=2)
        ax[1].set_xlabel("length (bases)")
        ax[1].set_ylabel("peak GiB")
        fig.suptitle(f"mambadna 16x256 bidirectional, {dev_name}")
        fig.tight_layout()
        fig.savefig(path)
        print(f"plot: {path}")
    except Exception as e:  # noqa: BLE001
        print(f"plot failed: {e}")


if __name__ == "__main__":
    main()
