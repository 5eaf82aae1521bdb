#!/usr/bin/env bash
# Session 10, model-level check of the session-10 scan (forward-written backward checkpoints,
# longer segments, fp32 B/C rows in the Gluon backward): issue 4's bench_pretrain.py (mambadna
# vs mamba_ssm Caduceus-style vs SDPA), mamba_ssm built first; the GPU checkpoint test first.
# Run from the repo root on the device with .whl and .baselines carried.
source benchmarks/device_setup.sh --mamba
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 100 python3 -m pytest -q tests/test_scan_triton.py tests/test_chunked_layer.py -k "from_forward or (gpu and not gluon_backward) or (gluon_backward and variant0)" 2>&1 | tail -3
wait $MAMBA_BUILD_PID; tail -1 /tmp/mamba_build.log
PYTHONPATH=/tmp/mamba_site:$PYTHONPATH timeout ${BENCH_S:-420} python3 benchmarks/bench_pretrain.py --out "$OUT" \
  --reps ${REPS:-2} --long-chunks 524288,262144 2>&1 | tee "$OUT/bench_pretrain.log" | grep -v -i warn | tail -30
