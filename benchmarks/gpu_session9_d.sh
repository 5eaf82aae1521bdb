#!/usr/bin/env bash
# Session 9, last GPU call: (a) A/B of more segments a block step in the cross-segment
# combine (combine_tile; at batch 1 and 2^20 its programs have 32 lanes and walk 8192
# segments 32 at a time: 0.53 ms a call in profile_dirs.py); the fastest at 2^20 is kept
# for (b) the full issue-3 table against mamba_ssm (built in the background meanwhile).
# Run from the repo root on the device with .whl and .baselines carried.
source benchmarks/device_setup.sh --mamba
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name --format=csv,noheader
T=kernels/triton_scan.py
timeout 200 python3 benchmarks/ab_scan.py --variant cur=$T \
  --variant ct2k=$T:'{"combine_tile": 2048}' \
  --variant ct4k=$T:'{"combine_tile": 4096}' \
  --rep ${REP:-100} --shapes 1,0,3 --bidir --best "$OUT/best.json" 2>&1 | tee "$OUT/ab_s9d.log" | tail -16
wait $MAMBA_BUILD_PID; tail -1 /tmp/mamba_build.log
PYTHONPATH=/tmp/mamba_site:$PYTHONPATH timeout ${BENCH_S:-280} python3 benchmarks/bench_scan.py --config "$(cat $OUT/best.json 2>/dev/null || echo '{}')" --out "$OUT" 2>&1 | tee "$OUT/bench_scan.log" | tail -22
