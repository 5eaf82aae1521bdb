#!/usr/bin/env bash
# Session 9, first GPU call: (a) GPU tests of the Gluon backward with states refined in
# shared memory from sparser global checkpoints (bwd_fine) and of the bidirectional scan
# with its intermediate output / saved pre-gate sum in the input dtype (bidir_acc);
# (b) A/B of both against the session-8 defaults, causal and bidirectional.
# Run from the repo root on the device with .whl carried.
source benchmarks/device_setup.sh
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 170 python3 -m pytest -q -x tests/test_scan_triton.py -k "bidirectional or (gluon_backward and (fine or 700))" 2>&1 | tail -4
T=kernels/triton_scan.py
timeout 400 python3 benchmarks/ab_scan.py --variant s8=$T:'{"bidir_acc": "fp32"}' \
  --variant acc=$T \
  --variant f16=$T:'{"bwd_fine": 16}' \
  --variant f8c1=$T:'{"bwd_fine": 8, "ckpt": 1}' \
  --variant f16c1=$T:'{"bwd_fine": 16, "ckpt": 1}' \
  --variant f32c1=$T:'{"bwd_fine": 32, "ckpt": 1}' \
  --rep ${REP:-100} --shapes ${AB_SHAPES:-0,3,1} --bidir 2>&1 | tee "$OUT/ab_s9a.log" | tail -30
