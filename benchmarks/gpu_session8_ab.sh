#!/usr/bin/env bash
# Session 8, first GPU call: software prefetch of the rows ahead of the row walks
# (CONFIG prefetch / prefetch_bwd / prefetch_level), one call:
#  (a) GPU tests of the scan (Gluon variants incl. prefetch, realistic shapes);
#  (b) A/B of prefetch distances and cache levels against prefetch off;
#  (c) the model-step profile with the most promising setting (PROFILE_CFG).
# Run from the repo root on the device with .whl carried.
source benchmarks/device_setup.sh
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 200 python3 -m pytest -q -m gpu tests/test_scan_triton.py -k "gluon_backward or realistic" 2>&1 | tail -3
T=kernels/triton_scan.py
timeout 330 python3 benchmarks/ab_scan.py --variant off=$T \
  --variant pf8=$T:'{"prefetch": 8, "prefetch_bwd": 4}' \
  --variant pf16=$T:'{"prefetch": 16, "prefetch_bwd": 8}' \
  --variant pf8L1=$T:'{"prefetch": 8, "prefetch_bwd": 4, "prefetch_level": "L1"}' \
  --variant pf4=$T:'{"prefetch": 4, "prefetch_bwd": 2}' \
  --variant fwd16=$T:'{"prefetch": 16}' \
  --rep ${REP:-100} --shapes ${AB_SHAPES:-0,3,2} 2>&1 | tee "$OUT/ab_s8.log" | tail -22
timeout 60 python3 benchmarks/profile_model.py --rows 12 --scan-config "${PROFILE_CFG:-{\"prefetch\": 8, \"prefetch_bwd\": 4\}}" 2>&1 | grep -v -i warn | tee "$OUT/profile_model.log" | head -18
