"""One-line summary of a training run's metrics.jsonl (losses, validation, tokens/s, peak memory).

    python3 benchmarks/metrics_summary.py RUN/metrics.jsonl [label]
"""
import json
import sys


def main():
    path = sys.argv[1]
    label = sys.argv[2] if len(sys.argv) > 2 else path
    rows = [json.loads(line) for line in open(path)]
    train = [r for r in rows if "loss" in r]
    print(f"{label} losses:", " ".join(f"{r['loss']:.3f}" for r in train))
    print("val:", [r.get("val_loss") for r in rows if "val_loss" in r],
          "tokens/s:", [round(r["tokens_per_s"]) for r in rows if "tokens_per_s" in r][-1:],
          "peak GiB:", max((r.get("peak_mem_gib", 0) for r in rows), default=0))


if __name__ == "__main__":
    main()
