#!/usr/bin/env bash
# Issue 3 on one GPU, one call: sweep the scan kernel's configs (no
# mamba_ssm needed) while mamba_ssm builds, then the full side-by-side table with
# the best config. Run from the repo root on the device with .whl and .baselines.
source benchmarks/device_setup.sh --mamba
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
if [ -z "${SCAN_CONFIG:-}" ]; then
  timeout ${SWEEP_S:-300} python3 benchmarks/bench_scan.py --sweep-only --out "$OUT" ${SWEEP_ARGS:-}
  SCAN_CONFIG=$(cat "$OUT/best_config.json" 2>/dev/null || echo "{}")
fi
wait $MAMBA_BUILD_PID; tail -1 /tmp/mamba_build.log
PYTHONPATH=/tmp/mamba_site:$PYTHONPATH python3 benchmarks/bench_scan.py --config "$SCAN_CONFIG" --out "$OUT" ${BENCH_ARGS:-}
