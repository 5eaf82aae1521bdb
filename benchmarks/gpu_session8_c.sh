#!/usr/bin/env bash
# Session 8, third GPU call (new defaults: gluon_reuse 1, prefetch_bwd 4):
#  (a) GPU scan tests at realistic shapes and the Gluon variants;
#  (b) A/B of the last backward variants; the fastest at (8, 512, 16, 131072) is used for
#  (c) the full issue-3 table against mamba_ssm (built in the background meanwhile).
# Run from the repo root on the device with .whl and .baselines carried.
source benchmarks/device_setup.sh --mamba
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 150 python3 -m pytest -q -m gpu tests/test_scan_triton.py -k "realistic or (gluon_backward and 4097)" 2>&1 | tail -3
T=kernels/triton_scan.py
echo '{}' > /tmp/best.json
timeout 150 python3 benchmarks/ab_scan.py --variant new=$T \
  --variant pfb8=$T:'{"prefetch_bwd": 8}' \
  --variant reuse2=$T:'{"gluon_reuse": 2}' \
  --variant pfb6L1=$T:'{"prefetch_bwd": 6, "prefetch_level": "L1"}' \
  --rep ${REP:-60} --shapes 0 --best /tmp/best.json 2>&1 | tee "$OUT/ab_s8c.log" | tail -7
wait $MAMBA_BUILD_PID; tail -1 /tmp/mamba_build.log
PYTHONPATH=/tmp/mamba_site:$PYTHONPATH timeout ${BENCH_S:-230} python3 benchmarks/bench_scan.py --config "$(cat /tmp/best.json)" --out "$OUT" 2>&1 | tee "$OUT/bench_scan.log" | tail -24
