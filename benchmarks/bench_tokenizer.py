"""Tokenizer encode throughput (MB/s) on one core.

    python benchmarks/bench_tokenizer.py [--mb 64]

Prints a table: case, bytes, median seconds over repeats, MB/s, target 300 MB/s.
"""
from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from mambadna.tokenizer import encode  # noqa: E402


def bench(fn, repeats=7):
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=64)
    args = ap.parse_args()
    n = args.mb * 2**20
    rng = np.random.default_rng(0)
    upper = np.frombuffer(b"ACGT", np.uint8)[rng.integers(0, 4, n)].tobytes()
    mixed = np.frombuffer(b"ACGTacgtNn", np.uint8)[rng.integers(0, 10, n)].tobytes()
    cases = [
        ("upper ACGT, bytes", lambda: encode(upper)),
        ("mixed case + N, bytes", lambda: encode(mixed)),
        ("mixed, with soft-mask", lambda: encode(mixed, return_softmask=True)),
        ("upper ACGT, str", lambda s=upper.decode(): encode(s)),
    ]
    print(f"# tokenizer encode throughput, one core ({platform.processor() or platform.machine()}), {args.mb} MiB inputs")
    print(f"{'case':<26} {'median s':>9} {'MB/s':>8} {'target':>7}")
    for name, fn in cases:
        fn()
        t = bench(fn)
        print(f"{name:<26} {t:9.4f} {n / t / 1e6:8.0f} {'>=300':>7}")


if __name__ == "__main__":
    main()
