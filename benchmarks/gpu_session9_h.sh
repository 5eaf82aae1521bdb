#!/usr/bin/env bash
# Session 9: A/B of wider d-blocks for the backward's adjoint and checkpoint passes
# (pass_block_d 64; they ran at the gradient kernel's 32) and of a longer prefetch distance
# in the Gluon backward (prefetch_bwd 12), causal and bidirectional.
# (pass_block_d was neutral-to-slower and removed after this run; prefetch_bwd 12 kept.)
# Run from the repo root on the device with .whl carried.
source benchmarks/device_setup.sh
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 60 python3 -m pytest -q tests/test_scan_triton.py -k "blockings"  # (incl. the pass_block_d case, removed since) 2>&1 | tail -2
T=kernels/triton_scan.py
timeout 300 python3 benchmarks/ab_scan.py --variant cur=$T \
  --variant pb64=$T:'{"pass_block_d": 64}' \
  --variant pf12=$T:'{"prefetch_bwd": 12}' \
  --variant pb64pf12=$T:'{"pass_block_d": 64, "prefetch_bwd": 12}' \
  --rep ${REP:-100} --shapes 0,3,1 --bidir 2>&1 | tee "$OUT/ab_s9h.log" | tail -18
