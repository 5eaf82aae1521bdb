#!/usr/bin/env bash
# Session 9, model-level check of the session-9 scan (sparser backward checkpoints refined
# in shared memory, one position offset a step): issue 4's bench_pretrain.py (mambadna vs
# mamba_ssm Caduceus-style vs SDPA, and mambadna against length), mamba_ssm built first.
# Run from the repo root on the device with .whl and .baselines carried.
source benchmarks/device_setup.sh --mamba
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name --format=csv,noheader
wait $MAMBA_BUILD_PID; tail -1 /tmp/mamba_build.log
PYTHONPATH=/tmp/mamba_site:$PYTHONPATH timeout ${BENCH_S:-400} python3 benchmarks/bench_pretrain.py --out "$OUT" \
  --reps ${REPS:-2} --long-chunks 524288,262144 2>&1 | tee "$OUT/bench_pretrain.log" | grep -v -i warn | tail -30
