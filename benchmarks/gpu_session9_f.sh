#!/usr/bin/env bash
# Session 9, last GPU call: the bidirectional forward measured 22% slower with one position
# offset for all its tensors (gpu_session9_e.sh), while the one-direction walks gained; A/B
# of that choice (bidir_same: SAME_L, SAME_BC) for the bidirectional forward, then the full
# issue-3 table against mamba_ssm with the defaults (neither), mamba_ssm built meanwhile.
# (bidir_same was removed after this run: the bidirectional forward takes neither.)
# Run from the repo root on the device with .whl and .baselines carried.
source benchmarks/device_setup.sh --mamba
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 60 python3 -m pytest -q tests/test_scan_triton.py -k "bidirectional" 2>&1 | tail -2
T=kernels/triton_scan.py
timeout 200 python3 benchmarks/ab_scan.py --variant none=$T \
  --variant l=$T:'{"bidir_same": [true, false]}' \
  --variant bc=$T:'{"bidir_same": [false, true]}' \
  --variant both=$T:'{"bidir_same": [true, true]}' \
  --rep ${REP:-100} --shapes 0 --bidir 2>&1 | tee "$OUT/ab_s9f.log" | tail -10
wait $MAMBA_BUILD_PID; tail -1 /tmp/mamba_build.log
PYTHONPATH=/tmp/mamba_site:$PYTHONPATH timeout ${BENCH_S:-280} python3 benchmarks/bench_scan.py --out "$OUT" 2>&1 | tee "$OUT/bench_scan.log" | tail -21
