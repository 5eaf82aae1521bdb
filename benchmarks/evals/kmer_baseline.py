"""k-mer count baselines for the pretraining validation loss (issue 2).

Fits, on the training part of a genome, the conditional base distribution a
model's objective can see, and reports its cross-entropy per base (nats) on the
held-out part, next to ln 4 = 1.386 (uniform) and, optionally, a trained
mambadna model's validation loss on the same windows:

- next-token (causal): P(x_t | k bases to the left);
- masked-LM (bidirectional): P(x_t | k bases on each side).

The split is the one ``mambadna pretrain --val-fraction F`` makes: the last F of
each contig is held out.

    python benchmarks/evals/kmer_baseline.py [GENOME.fa] --val-fraction 0.02 [--model runs/ecoli]

GENOME defaults to the E. coli K-12 assembly under ../shared/data/genomes beside the repo (or .data/).
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402

ECOLI = "genomes/GCF_000005845.2_ASM584v2_genomic.fna.gz"


def _codes(ids: np.ndarray) -> np.ndarray:
    """token ids -> 0..3 for A,C,G,T and -1 for anything else."""
    c = ids.astype(np.int64) - 7
    c[(c < 0) | (c > 3)] = -1
    return c


def _context_index(c: np.ndarray, left: int, right: int):
    """Index of the (left, right) context of every position whose window is all ACGT."""
    L = len(c)
    valid = np.zeros(L, dtype=bool)
    valid[left:L - right] = True
    idx = np.zeros(L, dtype=np.int64)
    for j in range(1, left + 1):
        s = np.roll(c, j)
        valid &= s >= 0
        idx = idx * 4 + np.maximum(s, 0)
    for j in range(1, right + 1):
        s = np.roll(c, -j)
        valid &= s >= 0
        idx = idx * 4 + np.maximum(s, 0)
    valid &= c >= 0
    return idx, valid


def fit_eval(train_parts, val_parts, left, right, alpha=0.5):
    n_ctx = 4 ** (left + right)
    counts = np.zeros((n_ctx, 4), dtype=np.float64)
    for c in train_parts:
        idx, ok = _context_index(c, left, right)
        np.add.at(counts, (idx[ok], c[ok]), 1.0)
    probs = (counts + alpha) / (counts.sum(1, keepdims=True) + 4 * alpha)
    nll, n = 0.0, 0
    for c in val_parts:
        idx, ok = _context_index(c, left, right)
        nll -= np.log(probs[idx[ok], c[ok]]).sum()
        n += int(ok.sum())
    return nll / max(n, 1), n


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("genome", nargs="?", default=str(common.data_dir() / ECOLI))
    ap.add_argument("--val-fraction", type=float, default=0.02)
    ap.add_argument("--ks", default="1,2,3,4,6,8")
    ap.add_argument("--model", default=None, help="a pretrained model dir whose config.json holds 'val'")
    args = ap.parse_args()
    import mambadna

    g = mambadna.Genome(args.genome)
    train, val = [], []
    for contig, L in g.lengths.items():
        cut = L - int(round(L * args.val_fraction))
        ids = g.fetch_ids(contig, 0, L)
        train.append(_codes(ids[:cut]))
        val.append(_codes(ids[cut:]))
    ntr = sum(len(x) for x in train)
    nva = sum(len(x) for x in val)
    print(f"# {Path(args.genome).name}: {ntr:,} training bases, {nva:,} held-out bases (last {args.val_fraction:g} of each contig)")
    print(f"{'baseline':<36} {'nats/base':>10}")
    print(f"{'uniform (ln 4)':<36} {math.log(4):10.4f}")
    for k in map(int, args.ks.split(",")):
        if 4 ** k <= 4 ** 12:
            v, _ = fit_eval(train, val, k, 0)
            print(f"{f'next-token, {k} left':<36} {v:10.4f}")
        if 4 ** (2 * k) <= 4 ** 12:
            v, _ = fit_eval(train, val, k, k)
            print(f"{f'masked-LM, {k} each side':<36} {v:10.4f}")
    if args.model:
        from mambadna.components.checkpoint import read_config

        cfg = read_config(args.model)  # flat or nested config.json, read back nested
        kind = "masked-LM" if cfg["model"]["bidirectional"] else "next-token"
        val_m = (cfg.get("val") or {}).get("val_loss")
        if val_m is not None:
            print(f"{f'mambadna {kind} ({args.model})':<36} {val_m:10.4f}")


if __name__ == "__main__":
    main()
