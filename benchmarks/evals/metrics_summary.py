"""One-line summary of a training run's metrics.jsonl (losses, validation, tokens/s, peak memory).

    python3 benchmarks/evals/metrics_summary.py RUN/metrics.jsonl [label]
"""
import argparse
import json


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("metrics", help="a run's metrics.jsonl")
    ap.add_argument("label", nargs="?", default=None)
    a = ap.parse_args()
    rows = [json.loads(line) for line in open(a.metrics) if line.strip()]
    train = [r for r in rows if "loss" in r]
    print(f"{a.label or a.metrics} losses:", " ".join(f"{r['loss']:.3f}" for r in train))
    print("val:", [r.get("val_loss") for r in rows if "val_loss" in r],
          "tokens/s:", [round(r["tokens_per_s"]) for r in rows if "tokens_per_s" in r][-1:],
          "peak GiB:", max((r.get("peak_mem_gib", 0) for r in rows), default=0))


if __name__ == "__main__":
    main()
