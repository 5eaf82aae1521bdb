#!/usr/bin/env bash
# Issue 4 on one GPU, one call: (a) E. coli pretraining of the 16 x 256 bidirectional
# model at 2^20 and at 1 kb with the same tokens per step (loss must fall at both);
# (b) bench_pretrain.py side by side with mamba_ssm (Caduceus-style) and SDPA.
# Run from the repo root on the device with .whl, .baselines and .gpudata carried.
source benchmarks/device_setup.sh --mamba
G=.gpudata/GCF_000005845.2_ASM584v2_genomic.fna.gz
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT" /tmp/runs
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
COMMON="--d-model 256 --n-layers 16 --max-steps ${STEPS:-30} --lr 2e-3 --warmup-steps 3 --val-fraction 0.25 --eval-batches 1 --save-every 1000 --no-progress"
for L in 1048576 1024; do
  B=$((1048576 / L)); MB=$(( B > 64 ? 64 : B ))
  extra=""; [ "$L" -ge 1048576 ] && extra="--checkpoint-layers ${RESID:-}"
  mambadna pretrain $G --out /tmp/runs/ecoli_$L --seq-len $L --batch-size $B --micro-batch-size $MB \
     --eval-every ${STEPS:-30} $COMMON $extra 2>&1 | grep -v "^pretrain" | tail -3
  cp /tmp/runs/ecoli_$L/metrics.jsonl "$OUT/metrics_ecoli_$L.jsonl"
  python3 - "$L" <<'PY'
import json, sys
L = sys.argv[1]
rows = [json.loads(l) for l in open(f"/tmp/runs/ecoli_{L}/metrics.jsonl")]
tp = [r for r in rows if "tokens_per_s" in r]
print(f"seq_len {L}: loss step1 {rows[0]['loss']:.4f} -> step{rows[-1]['step']} {rows[-1]['loss']:.4f}; "
      f"val {rows[-1].get('val_loss', float('nan')):.4f}; tokens/s {tp[-1]['tokens_per_s']:.3g}; "
      f"peak {max(r.get('peak_mem_gib', 0) for r in tp):.2f} GiB")
PY
done
wait $MAMBA_BUILD_PID; tail -2 /tmp/mamba_build.log
PYTHONPATH=/tmp/mamba_site:$PYTHONPATH python3 benchmarks/bench_pretrain.py --out "$OUT" --reps ${REPS:-2}
