#!/usr/bin/env bash
# Issues 3 and 4, one GPU call (session 7), with the new defaults (Gluon backward, clamped
# B/C rows, checkpoints every 2 in groups bounded by bwd_ckpt_bytes; one-pass conv backward):
#  (a) GPU tests: scan (Gluon variants, realistic shapes), norm, conv;
#  (b) A/B of the backward against the session-6 default (Triton kernel, checkpoints every 4);
#  (c) bench_conv.py and the model-step profile;
#  (d) the full issue-3 table against mamba_ssm (built in the background meanwhile).
# Run from the repo root on the device with .whl and .baselines carried.
source benchmarks/device_setup.sh --mamba
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 150 python3 -m pytest -q -m gpu tests/test_scan_triton.py tests/test_norm_triton.py tests/test_conv_triton.py 2>&1 | tail -4
T=kernels/triton_scan.py
timeout 120 python3 benchmarks/ab_scan.py --variant s6=$T:'{"bwd_impl": "triton", "ckpt": 4, "gluon_mask_bc": true}' \
  --variant s7=$T \
  --variant s7_mask=$T:'{"gluon_mask_bc": true}' \
  --variant s7_ckpt4=$T:'{"ckpt": 4}' \
  --shapes ${AB_SHAPES:-0,3,2} 2>&1 | tail -16 | tee "$OUT/ab_s7.log"
timeout 60 python3 benchmarks/bench_conv.py 2>&1 | tee "$OUT/bench_conv.log"
timeout 60 python3 benchmarks/profile_model.py --rows 24 2>&1 | grep -v -i warn | tee "$OUT/profile_model.log" | head -30
wait $MAMBA_BUILD_PID; tail -1 /tmp/mamba_build.log
PYTHONPATH=/tmp/mamba_site:$PYTHONPATH timeout ${BENCH_S:-200} python3 benchmarks/bench_scan.py --config '{}' --out "$OUT" 2>&1 | tee "$OUT/bench_scan.log" | tail -24
