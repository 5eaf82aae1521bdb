#!/usr/bin/env bash
# Session 9, second GPU call (defaults now bwd_fine 16, bidir_acc "input"): (a) GPU tests of
# the Gluon backward in all its variants and of the bidirectional scan; (b) per-kernel times
# of the forward walked up and down in time and of the bidirectional scan (profile_dirs.py);
# (c) A/B of the sub-segment length bwd_fine and of the prefetch distance with it.
# Run from the repo root on the device with .whl carried.
source benchmarks/device_setup.sh
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 200 python3 -m pytest -q tests/test_scan_triton.py -k "bidirectional or gluon_backward" 2>&1 | tail -4
timeout 90 python3 benchmarks/profile_dirs.py --shapes 3,1 2>&1 | tee "$OUT/profile_dirs.log" | tail -70
T=kernels/triton_scan.py
timeout 260 python3 benchmarks/ab_scan.py --variant f16=$T \
  --variant f32=$T:'{"bwd_fine": 32}' \
  --variant f64=$T:'{"bwd_fine": 64}' \
  --variant f128=$T:'{"bwd_fine": 128}' \
  --variant f16pf0=$T:'{"prefetch_bwd": 0}' \
  --variant f16pf8=$T:'{"prefetch_bwd": 8}' \
  --rep ${REP:-100} --shapes ${AB_SHAPES:-0,3} --bidir 2>&1 | tee "$OUT/ab_s9b.log" | tail -18
