#!/usr/bin/env bash
# Issue 6 on one GPU, one call: the GPU-marked embedding tests, then
# bench_embed.py (throughput at 1 kb / 131 kb / 1 Mb windows, flat memory for
# 1 / 4 / 10 Mb sequences in chunked exact mode). Run from the repo root on the
# device with .whl carried.
source benchmarks/device_setup.sh
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -m pytest -q -m gpu tests/test_embed.py tests/test_scan_triton.py -p no:cacheprovider 2>&1 | tail -3
python3 benchmarks/bench_embed.py --json "$OUT/bench_embed.json" ${EMBED_ARGS:-}
