#!/usr/bin/env bash
# Session 10: GPU scan tests (checkpoints from the forward, longer segments), A/B of the
# longer-segment rule (seg_long 256 default vs 512 vs off), then the issue-3 table
# (bench_scan.py against mamba_ssm, built in the background meanwhile).
# Run from the repo root on the device with .whl and .baselines carried.
source benchmarks/device_setup.sh --mamba
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 120 python3 -m pytest -q tests/test_scan_triton.py -k "realistic or bidirectional or from_forward or longer or strided or (gluon and (variant0 or variant2 or variant3 or variant11))" 2>&1 | tail -3
T=kernels/triton_scan.py
timeout 150 python3 benchmarks/ab_scan.py --variant sl256=$T \
  --variant sl512=$T:'{"seg_long": 512}' \
  --variant sl0=$T:'{"seg_long": 0}' \
  --rep ${REP:-100} --shapes 0,2,3,1 --bidir 2>&1 | tee "$OUT/ab_s10b.log" | tail -22
wait $MAMBA_BUILD_PID; tail -1 /tmp/mamba_build.log
PYTHONPATH=/tmp/mamba_site:$PYTHONPATH timeout ${BENCH_S:-290} python3 benchmarks/bench_scan.py --out "$OUT" 2>&1 | tee "$OUT/bench_scan.log" | tail -21
