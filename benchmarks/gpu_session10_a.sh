#!/usr/bin/env bash
# Session 10: the forward writes the backward's checkpoints (fwd_ckpt_bytes) instead of the
# backward's checkpoint pass; A/B against the backward computing them (fwd_ckpt_bytes 0, the
# session-9 behaviour), with denser checkpoints (bwd_fine 8) and longer segments (seg 256).
# GPU scan tests first. Run from the repo root on the device with .whl carried.
source benchmarks/device_setup.sh
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 200 python3 -m pytest -q tests/test_scan_triton.py -k "gluon or realistic or bidirectional or from_forward or strided" 2>&1 | tail -3
T=kernels/triton_scan.py
timeout 360 python3 benchmarks/ab_scan.py --variant nock=$T:'{"fwd_ckpt_bytes": 0}' \
  --variant fwdck=$T \
  --variant fine8=$T:'{"bwd_fine": 8}' \
  --variant seg256=$T:'{"seg": 256}' \
  --rep ${REP:-100} --shapes 0,3,1 --bidir 2>&1 | tee "$OUT/ab_s10a.log" | tail -22
