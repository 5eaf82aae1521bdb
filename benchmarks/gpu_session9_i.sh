#!/usr/bin/env bash
# Session 9, final table: bench_scan.py against mamba_ssm (built first) with the final
# defaults (prefetch_bwd 12 after gpu_session9_h.sh).
# Run from the repo root on the device with .whl and .baselines carried.
source benchmarks/device_setup.sh --mamba
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 100 python3 -m pytest -q tests/test_scan_triton.py -k "realistic or bidirectional or strided" 2>&1 | tail -2
wait $MAMBA_BUILD_PID; tail -1 /tmp/mamba_build.log
PYTHONPATH=/tmp/mamba_site:$PYTHONPATH timeout ${BENCH_S:-280} python3 benchmarks/bench_scan.py --out "$OUT" 2>&1 | tee "$OUT/bench_scan.log" | tail -21
