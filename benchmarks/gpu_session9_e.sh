#!/usr/bin/env bash
# Session 9, fifth GPU call: one position offset for all the (batch, length, d_inner)
# tensors that share a position stride (SAME_L; SAME_BC for B, C, dB, dC) in the Gluon
# backward and the Triton walks (13% fewer instructions a backward block in SASS), and
# du/ddelta/dz allocated contiguous. (a) GPU tests (strided layouts, realistic shapes,
# bidirectional); (b) A/B against the previous commit's file (.variants/scan_s9.py,
# carried); (c) the full issue-3 table against mamba_ssm (built in the background).
# Run from the repo root on the device with .whl, .variants and .baselines carried.
source benchmarks/device_setup.sh --mamba
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 120 python3 -m pytest -q tests/test_scan_triton.py -k "strided or realistic or bidirectional" 2>&1 | tail -2
T=kernels/triton_scan.py
timeout 200 python3 benchmarks/ab_scan.py --variant s9=.variants/scan_s9.py --variant cur=$T \
  --rep ${REP:-100} --shapes 0,1,3 --bidir 2>&1 | tee "$OUT/ab_s9e.log" | tail -12
wait $MAMBA_BUILD_PID; tail -1 /tmp/mamba_build.log
PYTHONPATH=/tmp/mamba_site:$PYTHONPATH timeout ${BENCH_S:-280} python3 benchmarks/bench_scan.py --out "$OUT" 2>&1 | tee "$OUT/bench_scan.log" | tail -21
