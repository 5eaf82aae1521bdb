#!/usr/bin/env bash
# Session 8, fourth GPU call:
#  (a) A/B of row prefetch in the walks down in time (prefetch_desc: reverse scans,
#      adjoint passes, the reverse half of the bidirectional output), incl. the reverse
#      forward and the bidirectional scan; the fastest fwd+bwd at (8, 512, 16, 131072) is used for
#  (b) issue 4's bench_pretrain.py (mambadna vs mamba_ssm Caduceus-style vs SDPA, and
#      mambadna against length), mamba_ssm built in the background meanwhile.
# Run from the repo root on the device with .whl and .baselines carried.
source benchmarks/device_setup.sh --mamba
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name --format=csv,noheader
T=kernels/triton_scan.py
echo '{}' > /tmp/best.json
timeout 170 python3 benchmarks/ab_scan.py --variant new=$T \
  --variant pd4=$T:'{"prefetch_desc": 4}' \
  --variant pd8=$T:'{"prefetch_desc": 8}' \
  --variant pd16=$T:'{"prefetch_desc": 16}' \
  --rep ${REP:-60} --shapes 0,3 --reverse --bidir --best /tmp/best.json 2>&1 | tee "$OUT/ab_s8d.log" | tail -24
wait $MAMBA_BUILD_PID; tail -1 /tmp/mamba_build.log
PYTHONPATH=/tmp/mamba_site:$PYTHONPATH timeout ${BENCH_S:-330} python3 benchmarks/bench_pretrain.py --out "$OUT" \
  --reps ${REPS:-2} --long-chunks 524288,262144 --scan-config "$(cat /tmp/best.json)" 2>&1 | tee "$OUT/bench_pretrain.log" | grep -v -i warn | tail -30
