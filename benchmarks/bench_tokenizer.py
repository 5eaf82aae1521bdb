"""Tokenizer encode throughput (MB/s) on one core, against a plain numpy lookup-table encoder
(np.frombuffer + table index: the obvious baseline) and the 300 MB/s target.

    python benchmarks/run.py tokenizer
    python benchmarks/bench_tokenizer.py --quick
"""
from __future__ import annotations

import os
import statistics
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

TARGET = 300.0


def median_s(fn, repeats):
    fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main(argv=None):
    ap = common.parser(__doc__)
    ap.add_argument("--mb", type=int, default=64, help="MiB per input [64; --quick 4]")
    a = ap.parse_args(argv)

    import numpy as np
    from mambadna.tokenizer import encode

    mb = min(a.mb, 4) if a.quick else a.mb
    n = mb * 2**20
    rng = np.random.default_rng(0)
    upper = np.frombuffer(b"ACGT", np.uint8)[rng.integers(0, 4, n)].tobytes()
    mixed = np.frombuffer(b"ACGTacgtNn", np.uint8)[rng.integers(0, 10, n)].tobytes()
    ids = encode(b"ACGTNacgtn")
    lut = np.full(256, 255, np.uint8)  # the same ids through a numpy table (no validation, no soft-mask)
    for ch, i in zip(b"ACGTNacgtn", ids):
        lut[ch] = i
    numpy_encode = lambda s: lut[np.frombuffer(s, np.uint8)]  # noqa: E731
    cases = [
        ("upper ACGT, bytes", lambda: encode(upper), lambda: numpy_encode(upper)),
        ("mixed case + N, bytes", lambda: encode(mixed), lambda: numpy_encode(mixed)),
        ("mixed, with soft-mask", lambda: encode(mixed, return_softmask=True), lambda: numpy_encode(mixed)),
        ("upper ACGT, str", lambda s=upper.decode(): encode(s), lambda s=upper.decode(): numpy_encode(s.encode())),
    ]
    import torch

    print(common.header(torch.device("cpu"), f"one core; {mb} MiB inputs"))
    print("# baseline: numpy lookup table (np.frombuffer + index)")
    reps = 1 if a.quick else 7
    rows = []
    for name, fn, base in cases:
        t, tb = median_s(fn, reps), median_s(base, reps)
        rows.append(dict(case=name, mb_per_s=n / t / 1e6, baseline_mb_per_s=n / tb / 1e6, ratio=tb / t,
                         target=TARGET))
        print(f"{name}: {n / t / 1e6:.0f} MB/s (numpy table {n / tb / 1e6:.0f} MB/s)", flush=True)
    print()
    print(common.md_table(["case", "MB/s", "numpy table MB/s", "ratio", "target MB/s"],
                          [(r["case"], f"{r['mb_per_s']:.0f}", f"{r['baseline_mb_per_s']:.0f}", f"{r['ratio']:.2f}x",
                            f">= {TARGET:.0f}") for r in rows]))
    common.write_json(a.json, rows, torch.device("cpu"), benchmark="tokenizer", mib=mb)
    return rows


if __name__ == "__main__":
    main()
