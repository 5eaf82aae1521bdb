#!/usr/bin/env bash
# Session 8, last GPU call: the bidirectional scan's forward keeps both directions' pre-gate
# sum (fp32), so its backward takes dz from it once (no output recompute, no fp32 dz round
# trip, no cast): GPU tests of the scan (bidirectional on the GPU, Gluon variants), then the
# full issue-3 table against mamba_ssm (built in the background meanwhile).
# Run from the repo root on the device with .whl and .baselines carried.
source benchmarks/device_setup.sh --mamba
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 120 python3 -m pytest -q tests/test_scan_triton.py -k "bidirectional or realistic or (gluon_backward and 4097)" 2>&1 | tail -3
wait $MAMBA_BUILD_PID; tail -1 /tmp/mamba_build.log
PYTHONPATH=/tmp/mamba_site:$PYTHONPATH timeout ${BENCH_S:-260} python3 benchmarks/bench_scan.py --config '{}' --out "$OUT" 2>&1 | tee "$OUT/bench_scan.log" | tail -22
