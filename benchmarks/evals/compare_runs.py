"""Compare pretraining runs from their metrics.jsonl: loss side by side and tokens/s.

    python benchmarks/evals/compare_runs.py runs/1gpu runs/2gpu [--skip 3]

Prints the per-step loss of each run, the mean absolute difference, and the
median tokens/s (first --skip logged points dropped as warm-up) with the
scaling efficiency of each run relative to the first.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def load(run):
    return [json.loads(l) for l in (Path(run) / "metrics.jsonl").read_text().splitlines() if l.strip()]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--skip", type=int, default=2)
    ap.add_argument("--gpus", default=None, help="comma list of GPU counts per run (for efficiency)")
    args = ap.parse_args()
    rows = [load(r) for r in args.runs]
    n = min(len(r) for r in rows)
    print("| step | " + " | ".join(Path(r).name for r in args.runs) + " |")
    print("|---" * (len(args.runs) + 1) + "|")
    for i in range(n):
        if i < 5 or i % max(1, n // 10) == 0 or i == n - 1:
            print(f"| {rows[0][i]['step']} | " + " | ".join(f"{r[i]['loss']:.4f}" for r in rows) + " |")
    for j in range(1, len(rows)):
        d = statistics.mean(abs(rows[0][i]["loss"] - rows[j][i]["loss"]) for i in range(n))
        print(f"mean |loss difference| {Path(args.runs[0]).name} vs {Path(args.runs[j]).name}: {d:.5f}")
    tps = []
    for r in rows:
        v = [x["tokens_per_s"] for x in r if "tokens_per_s" in x][args.skip:]
        tps.append(statistics.median(v) if v else float("nan"))
    gpus = [int(g) for g in args.gpus.split(",")] if args.gpus else [1] * len(rows)
    for r, t, g in zip(args.runs, tps, gpus):
        eff = t / (tps[0] * g / gpus[0])
        print(f"{Path(r).name}: median {t / 1e6:.3f} M tokens/s on {g} GPU(s); speed-up {t / tps[0]:.2f}x; "
              f"scaling efficiency {eff:.1%}")


if __name__ == "__main__":
    main()
