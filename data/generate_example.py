"""Write the example genome ``data/example_genome.fa`` (seeded, reproducible).

Two contigs drawn from one order-3 Markov chain with skewed transitions, with a
few planted motifs (so a model has something to learn below ln 4 nats per
base), a run of N and a soft-masked (lower-case) stretch. Usage:

    python data/generate_example.py [--seed 7] [--out data/example_genome.fa]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

BASES = np.frombuffer(b"ACGT", dtype=np.uint8)
MOTIFS = [b"TATAAT", b"TTGACA", b"GGATCCGAATTC", b"CACGTG"]


def markov_sequence(rng: np.random.Generator, length: int, trans: np.ndarray, order: int = 3) -> np.ndarray:
    cdf = np.cumsum(trans, axis=1)
    out = np.empty(length, dtype=np.uint8)
    ctx = 0
    draws = rng.random(length)
    for i in range(length):
        b = int(np.searchsorted(cdf[ctx], draws[i]))
        b = min(b, 3)
        out[i] = b
        ctx = ((ctx << 2) | b) & (4 ** order - 1)
    seq = BASES[out].copy()
    for _ in range(length // 400):  # planted motifs
        m = MOTIFS[rng.integers(len(MOTIFS))]
        p = int(rng.integers(0, length - len(m)))
        seq[p:p + len(m)] = np.frombuffer(m, dtype=np.uint8)
    return seq


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", default=str(Path(__file__).with_name("example_genome.fa")))
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    contigs = {"chrA": 160_000, "chrB": 64_000}
    trans = rng.dirichlet(np.full(4, 0.35), size=4 ** 3)  # one genome-wide model: skewed next-base laws
    with open(args.out, "w") as f:
        for name, L in contigs.items():
            seq = markov_sequence(rng, L, trans)
            if name == "chrB":
                seq[20_000:20_500] = ord("N")                  # assembly gap
                seq[40_000:42_000] = seq[40_000:42_000] + 32   # soft-masked repeat (lower case)
            f.write(f">{name} synthetic example contig (seed {args.seed})\n")
            s = seq.tobytes().decode()
            for i in range(0, len(s), 70):
                f.write(s[i:i + 70] + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
