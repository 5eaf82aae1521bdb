#!/usr/bin/env bash
# Session 9, third GPU call: the output walk walked down in time is 14-23% slower than up
# (profile_dirs.py: _rows_out_kernel 0.341 vs 0.278 ms at (64, 512, 16, 1024)). A/B of rows
# loaded two steps ahead (out_ahead 2) and of the reverse walk's segments launched last to
# first (rev_flip), against the session-8 file (.variants/scan_s8.py, carried) and the
# current defaults (bwd_fine 16, prefetch_bwd 8, bidir_acc "input").
# Run from the repo root on the device with .whl and .variants carried.
source benchmarks/device_setup.sh
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 100 python3 -m pytest -q tests/test_scan_triton.py -k "output_walk or bidirectional" 2>&1 | tail -2
T=kernels/triton_scan.py
timeout 420 python3 benchmarks/ab_scan.py --variant s8=.variants/scan_s8.py \
  --variant cur=$T \
  --variant a2=$T:'{"out_ahead": 2}' \
  --variant flip=$T:'{"rev_flip": true}' \
  --variant a2flip=$T:'{"out_ahead": 2, "rev_flip": true}' \
  --rep ${REP:-100} --shapes ${AB_SHAPES:-3,0,1} --reverse --bidir 2>&1 | tee "$OUT/ab_s9c.log" | tail -42
