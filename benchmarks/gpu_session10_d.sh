#!/usr/bin/env bash
# Session 10: forward-written checkpoints every 8 positions (fwd_fine 8, within a live-bytes
# bound of 1/8 of the device memory) A/B against every 16, then the issue-3 table
# (bench_scan.py against mamba_ssm, built in the background meanwhile). GPU tests first.
# Run from the repo root on the device with .whl and .baselines carried.
source benchmarks/device_setup.sh --mamba
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 150 python3 -m pytest -q tests/test_scan_triton.py -k "realistic or bidirectional or from_forward or longer or (gluon and (variant0 or variant3 or variant10 or variant12))" 2>&1 | tail -3
T=kernels/triton_scan.py
timeout 200 python3 benchmarks/ab_scan.py --variant fine8=$T \
  --variant fine16=$T:'{"fwd_fine": 16}' \
  --rep ${REP:-100} --shapes 0,3,1 --bidir 2>&1 | tee "$OUT/ab_s10d.log" | tail -11
wait $MAMBA_BUILD_PID; tail -1 /tmp/mamba_build.log
PYTHONPATH=/tmp/mamba_site:$PYTHONPATH timeout ${BENCH_S:-290} python3 benchmarks/bench_scan.py --out "$OUT" 2>&1 | tee "$OUT/bench_scan.log" | tail -21
