"""Saturation mutagenesis (`mambadna ism`) throughput against the raw forward bound.

ISM scores 3 substitutions per position with ONE masked forward per position
(shared by its three ALT alleles), so its bound is the encoder's raw forward
rate in windows/s: positions/s <= raw windows/s (RC-averaged: half of it).
Rows, per precision (fp32; bf16 on CUDA):

  raw forward   the engine's hidden states of a device-resident (batch, window)
                tensor, batch = token budget / window: windows/s = the bound
  ism           mambadna.inference.ism.iter_ism over the region (window making,
                masked forwards, LLRs, host copies): positions/s, ratio to the bound
  ism task      mambadna.tasks.ism.ism: the same plus the TSV and the bigWig
  ism rc        --rc-average (two forwards per position): ratio to bound / 2

Default: the 8 x 256 bidirectional model (random weights; speed does not depend
on them), window 1024, a 10 kb region of the E. coli genome (shared data; a
random 20 kb FASTA when absent).

    python benchmarks/run.py ism
    python benchmarks/bench_ism.py --device cpu --quick
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def _reference(tmp: Path) -> tuple:
    """(FASTA, contig, start0): E. coli when the shared data has it, else a random 20 kb contig."""
    g = common.data_dir() / "genomes" / "GCF_000005845.2_ASM584v2_genomic.fna.gz"
    if g.is_file():
        return g, "NC_000913.3", 1_000_000
    import numpy as np

    seq = "".join(np.random.default_rng(0).choice(list("ACGT"), 20_000))
    p = tmp / "random.fa"
    p.write_text(">rand\n" + "\n".join(seq[i:i + 80] for i in range(0, len(seq), 80)) + "\n")
    return p, "rand", 0


def main(argv=None):
    ap = common.parser(__doc__)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--window", type=int, default=1024)
    ap.add_argument("--length", type=int, default=10_000, help="region length (positions)")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args(argv)

    import torch

    from mambadna.components.checkpoint import save_model
    from mambadna.inference.engine import Embedder
    from mambadna.inference.ism import iter_ism, resolve_regions, variant_scorer
    from mambadna.inference.scoring import Scorer
    from mambadna.io.fasta import Genome
    from mambadna.tasks.ism import IsmConfig, ism

    dev = common.device(a.device)
    cuda = dev.type == "cuda"
    layers, d_model, W, n_pos, repeats = a.layers, a.d_model, a.window, a.length, a.repeats
    if a.quick:
        layers, d_model, W, n_pos, repeats = 2, 64, min(W, 256), min(n_pos, 200), 1
    print(common.header(dev, f"model {layers} x {d_model} bidirectional; window {W}; region {n_pos:,} positions"))
    print("# bound: raw forward windows/s (one masked forward per position; rc: two)")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ.setdefault("MAMBADNA_CACHE", str(tmp / "cache"))
        ref, contig, s0 = _reference(tmp)
        genome = Genome(ref)
        region = resolve_regions(genome, [(contig, s0, s0 + n_pos)])
        torch.manual_seed(0)
        enc = common.build_model(d_model, layers, bidirectional=True).to(dev).eval()
        mdir = tmp / "model"
        mdir.mkdir()
        save_model(enc.cpu(), mdir)
        enc = enc.to(dev)
        for prec in (["fp32", "bf16"] if cuda else ["fp32"]):
            emb = Embedder(enc, device=dev, pool=None, precision=prec)
            B = max(1, emb.max_tokens // W)
            ids = torch.randint(7, 11, (B, W), device=dev)
            t_raw = common.time_ms(lambda: emb.hidden(ids, -1), dev, 200, a.quick) / 1e3
            bound = B / t_raw
            rows.append(dict(precision=prec, what="raw forward", rate=bound, ratio=1.0, seconds=t_raw))
            sc = Scorer(enc, None, dev, precision=prec)
            # warm-up: a full group of positions and one as long as the region's last (kernel shapes)
            per = max(1, emb.max_tokens // W)
            warm = resolve_regions(genome, [(contig, s0, s0 + min(n_pos, per + (n_pos % per or per)))])

            def run_lib(rc):
                vs = variant_scorer(sc, "llr", rc)
                sum(1 for _ in iter_ism(vs, genome, warm, W))  # warm-up
                ts = []
                for _ in range(repeats):
                    common.sync(dev)
                    t = time.perf_counter()
                    n = sum(1 for _ in iter_ism(vs, genome, region, W))
                    ts.append(time.perf_counter() - t)
                return n / sorted(ts)[len(ts) // 2], sorted(ts)[len(ts) // 2]

            for what, rc, div in (("ism", False, 1), ("ism rc", True, 2)):
                rate, t = run_lib(rc)
                rows.append(dict(precision=prec, what=what, rate=rate, ratio=rate / (bound / div), seconds=t))
            ts = []
            for _ in range(repeats):
                cfg = IsmConfig(model=str(mdir), reference=str(ref), region=f"{contig}:{s0 + 1}-{s0 + n_pos}",
                                out=str(tmp / "ism.tsv"), bigwig=str(tmp / "ism.bw"), window=W, scores="llr",
                                device=str(dev), precision=prec, progress=False)
                ts.append(ism(cfg)["seconds"])  # the scoring + writing loop (model load excluded)
            t = sorted(ts)[len(ts) // 2]
            rows.append(dict(precision=prec, what="ism task", rate=n_pos / t, ratio=n_pos / t / bound, seconds=t))
            for r in rows[-4:]:
                unit = "windows/s" if r["what"] == "raw forward" else "positions/s"
                print(f"{prec:>5} {r['what']:>12} {r['rate']:>12,.1f} {unit:<11} ratio {r['ratio']:.2f}", flush=True)
    print()
    print(common.md_table(["precision", "what", "per s", "ratio to bound", "seconds"],
                          [(r["precision"], r["what"], f"{r['rate']:,.1f}", f"{r['ratio']:.2f}", r["seconds"])
                           for r in rows]))
    common.write_json(a.json, rows, dev, benchmark="ism", model=f"{layers}x{d_model}", window=W, positions=n_pos,
                      baseline="raw forward windows/s")
    return rows


if __name__ == "__main__":
    main()
