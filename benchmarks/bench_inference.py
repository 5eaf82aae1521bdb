"""Inference throughput: the raw encoder forward against `embed` and `classify`,
side by side in one run (issue 18's figure).

For each model (bidirectional 8 x 256 and 16 x 256 by default), window (1k, 8k)
and precision (fp32, bf16 on CUDA):
  raw      model.hidden_states(ids) on a device-resident (batch, window) tensor,
           no host copies: the encoder's own speed
  embed    mambadna.load(dir).embed(list of id arrays, pool="mean") end to end
  classify VariantScorer on synthetic SNVs (one ALT each) of a real genome, per score set
           (llr; llr,cosine), bound = raw windows/s (one masked forward per site)
Prints tokens/s (or variants/s), the ratio to raw and the median of --repeats.

    python benchmarks/bench_inference.py                       # GPU if present, else CPU
    python benchmarks/bench_inference.py --device cpu --threads 2 --layers 8 --windows 1024 --quick
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
GENOME = Path(os.environ.get("MAMBADNA_SHARED_DATA", REPO.parent / "shared" / "data")) / "genomes"


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, dev, repeats):
    fn()  # warm-up (JIT, autotune, allocator)
    ts = []
    for _ in range(repeats):
        _sync(dev)
        t = time.perf_counter()
        fn()
        _sync(dev)
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def _model_dir(tmp: Path, layers: int, d_model: int) -> Path:
    from mambadna.components.checkpoint import save_model
    from mambadna.model import MambaDNA, ModelConfig

    d = tmp / f"m{layers}x{d_model}"
    d.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    save_model(MambaDNA(ModelConfig(d_model=d_model, n_layers=layers, bidirectional=True)), d)
    return d


def _genome_fasta() -> Path:
    for p in sorted(GENOME.glob("*.f*a*")):
        if "coli" in p.name.lower() or "GCF_000005845" in p.name:
            return p
    found = sorted(GENOME.glob("*.f*a*"))
    if not found:
        sys.exit(f"no genome FASTA under {GENOME}")
    return found[0]


def _snv_windows(genome, n: int, window: int, seed: int = 0):
    """n VariantWindow objects for random SNVs (one ALT) on the first contig."""
    from mambadna.io.vcf import _WindowMaker, VariantStats

    rng = np.random.default_rng(seed)
    contig = genome.contigs[0]
    L = genome.lengths[contig]
    maker = _WindowMaker("synthetic", genome, window, True, VariantStats())
    out = []
    for i, pos in enumerate(sorted(rng.integers(window, L - window, size=n))):
        ref = genome.fetch(contig, int(pos) - 1, int(pos)).upper()
        if ref not in "ACGT":
            continue
        alt = "ACGT"[("ACGT".index(ref) + 1 + int(rng.integers(3))) % 4]
        out.append((None, list(maker.make(contig, int(pos), None, ref, [alt], i, f"snv {i}"))))
    return out


def _tolerance(model, enc, dev, seqs, windows) -> None:
    """How far bf16 autocast lands from fp32: pooled embeddings and zero-shot LLRs."""
    from scipy.stats import spearmanr

    from mambadna.inference.scoring import Scorer, VariantScorer

    e32 = model.embedder(pool="mean", precision="fp32").embed(seqs)
    e16 = model.embedder(pool="mean", precision="bf16").embed(seqs)
    e32, e16 = np.stack(e32), np.stack(e16)
    rel = np.abs(e16 - e32).max() / np.abs(e32).max()
    cos = (e16 * e32).sum(1) / np.linalg.norm(e16, axis=1) / np.linalg.norm(e32, axis=1)
    ll = {p: np.array([r[0] for _, _, rr in VariantScorer(Scorer(enc, None, dev, precision=p), ["llr"])
                       .score_records(windows) for r in rr]) for p in ("fp32", "bf16")}
    d = np.abs(ll["bf16"] - ll["fp32"])
    print(f"# bf16 vs fp32: embeddings max |diff| / max |fp32| {rel:.2e}, min cosine {cos.min():.6f}; "
          f"LLR max |diff| {d.max():.3f} (median {np.median(d):.3f}, fp32 LLR sd {ll['fp32'].std():.3f}), "
          f"Spearman {spearmanr(ll['fp32'], ll['bf16'])[0]:.5f} over {len(d)} SNVs", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    ap.add_argument("--layers", type=int, nargs="+", default=[8, 16])
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--windows", type=int, nargs="+", default=[1024, 8192])
    ap.add_argument("--tokens", type=int, default=None, help="tokens per measurement [4M CUDA, 64k CPU]")
    ap.add_argument("--variants", type=int, default=None, help="SNVs for classify [8192 CUDA, 64 CPU]")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="one repeat, fewer tokens (smoke test)")
    ap.add_argument("--json", default=None, help="also write the rows here")
    a = ap.parse_args()

    import mambadna
    from mambadna.components.device import resolve_device
    from mambadna.inference.scoring import Scorer, VariantScorer
    from mambadna.io.fasta import Genome

    dev = resolve_device(a.device)
    if a.threads:
        torch.set_num_threads(a.threads)
    cuda = dev.type == "cuda"
    tokens = a.tokens or ((1 << 22) if cuda else (1 << 16))
    n_var = a.variants or (8192 if cuda else 64)
    repeats = 1 if a.quick else a.repeats
    if a.quick:
        tokens, n_var = min(tokens, 1 << 13), min(n_var, 16)
    name = torch.cuda.get_device_name() if cuda else f"CPU ({torch.get_num_threads()} threads)"
    print(f"# device: {name}; torch {torch.__version__}; tokens per measurement {tokens}; "
          f"median of {repeats}")
    precisions = ["fp32", "bf16"] if cuda else ["fp32"]
    genome = Genome(_genome_fasta())
    rows = []
    hdr = f"{'model':>8} {'window':>6} {'prec':>5} {'what':>18} {'per s':>12} {'ratio':>6} {'ms':>9}"
    print(hdr)
    with tempfile.TemporaryDirectory() as tmp:
        for layers in a.layers:
            mdir = _model_dir(Path(tmp), layers, a.d_model)
            model = mambadna.load(mdir, device=dev)
            enc = model.torch_model
            for W in a.windows:
                n_seq = max(1, tokens // W)
                rng = np.random.default_rng(0)
                seqs = [rng.integers(7, 11, size=W).astype(np.int64) for _ in range(n_seq)]
                for prec in precisions:
                    emb = model.embedder(pool="mean", precision=prec)
                    B = max(1, min(emb.batch_size, emb.max_tokens // W))
                    ids = torch.from_numpy(np.stack(seqs[:B])).to(dev)

                    def raw():
                        for i in range(0, n_seq, B):
                            emb.hidden(ids[: min(B, n_seq - i)])

                    t_raw = _time(raw, dev, repeats)
                    t_emb = _time(lambda: emb.embed(seqs), dev, repeats)
                    r_raw = n_seq * W / t_raw
                    out = [("raw forward", r_raw, t_raw), ("embed mean", n_seq * W / t_emb, t_emb)]
                    if W == a.windows[0]:
                        windows = _snv_windows(genome, n_var, W)
                        bound = r_raw / W  # one masked forward per SNV site
                        for scores in (["llr"], ["llr", "cosine"]):
                            sc = Scorer(enc, None, dev, precision=prec)
                            vs = VariantScorer(sc, scores)
                            t = _time(lambda: sum(1 for _ in vs.score_records(windows)), dev, repeats)
                            vps = len(windows) / t
                            need = 1 if scores == ["llr"] else 3
                            out.append((f"classify {'+'.join(scores)}", vps, t, bound / need))
                    if prec == "bf16" and layers == a.layers[0] and W == a.windows[0]:
                        _tolerance(model, enc, dev, seqs[:512], _snv_windows(genome, 512, W))
                    for what, rate, t, *b in out:
                        ref = b[0] if b else r_raw
                        row = dict(model=f"{layers}x{a.d_model}", window=W, precision=prec, what=what,
                                   rate=rate, ratio=rate / ref, ms=t * 1e3, device=name)
                        rows.append(row)
                        print(f"{row['model']:>8} {W:>6} {prec:>5} {what:>18} {rate:>12,.0f} "
                              f"{row['ratio']:>6.2f} {t * 1e3:>9.1f}", flush=True)
    print("# ratio: embed / raw forward tokens/s; classify / bound (raw windows/s divided by the "
          "forwards per site: 1 for llr, 3 for llr+cosine)")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
