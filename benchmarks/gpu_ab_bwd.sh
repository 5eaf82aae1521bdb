#!/usr/bin/env bash
# Issue 3, one GPU call: per-kernel profile of the head at (8,512,16,131072), an A/B of
# backward variants (AB_VARIANTS, ab_scan.py syntax), and Nsight Compute on the backward
# kernel alone at (8,512,16,16384) for NCU_CONFIG. Variant copies live in .variants/ (carry it).
source benchmarks/device_setup.sh
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
[ "${PROFILE-1}" = 1 ] && python3 benchmarks/bench_scan.py --profile-only --shapes 0 2>&1 | grep -v "^$" | head -40
eval "python3 benchmarks/ab_scan.py $AB_VARIANTS --shapes ${AB_SHAPES:-0,3}" 2>&1 | tail -40
if [ -n "${NCU:-}" ]; then
  ncu --clock-control none -k regex:'_rows_bwd' --launch-count 1 \
    --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
    --section SchedulerStats --section MemoryWorkloadAnalysis --section InstructionStats \
    python3 benchmarks/scan_once.py 8 512 16 16384 "${NCU_CONFIG:-{\}}" > "$OUT/ncu_bwd.txt" 2>&1
  grep -E "Duration|Registers Per|Achieved Occupancy|Warp Cycles Per Issued|Issue Slots Busy|Memory Throughput|Compute \(SM\)|Stall|stall|L1/TEX Hit|L2 Hit|DRAM Through" "$OUT/ncu_bwd.txt" | head -60
fi
