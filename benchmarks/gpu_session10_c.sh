#!/usr/bin/env bash
# Session 10: the Gluon backward and its adjoint pass reading B and C from fp32 copies
# (bwd_bc_fp32: no per-lane bf16 conversions of the replicated rows; 10% fewer SASS instructions
# a block at 254 registers, no spills), A/B against bf16 rows and with checkpoints every 8.
# GPU tests first. Run from the repo root on the device with .whl carried.
source benchmarks/device_setup.sh
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 150 python3 -m pytest -q tests/test_scan_triton.py -k "realistic or bidirectional or from_forward or longer or (gluon and (variant0 or variant4 or variant12))" 2>&1 | tail -3
T=kernels/triton_scan.py
timeout 300 python3 benchmarks/ab_scan.py --variant bcf32=$T \
  --variant bcbf16=$T:'{"bwd_bc_fp32": false}' \
  --variant bcf32_fine8=$T:'{"bwd_fine": 8}' \
  --rep ${REP:-100} --shapes 0,3,1 --bidir 2>&1 | tee "$OUT/ab_s10c.log" | tail -16
