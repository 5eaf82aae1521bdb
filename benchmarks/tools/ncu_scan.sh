#!/usr/bin/env bash
# Issue 3, one GPU call: where the scan's time goes. torch.profiler per kernel at the
# two big shapes, then Nsight Compute (clocks left alone) on every scan kernel of one
# forward+backward at (8, 512, 16, 16384): speed of light, occupancy, warp stall reasons.
source benchmarks/device_setup.sh
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 benchmarks/bench_scan.py --profile-only --shapes 0,3 --out "$OUT" ${PROFILE_ARGS:-} 2>&1 | tail -80
SHAPE=${NCU_SHAPE:-"8 512 16 16384"}
ncu --clock-control none -k regex:'_rows_|_chunk_combine' --launch-skip ${NCU_SKIP:-0} --launch-count ${NCU_COUNT:-12} \
  --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
  --section SchedulerStats --section MemoryWorkloadAnalysis --section InstructionStats \
  python3 benchmarks/scan_once.py $SHAPE ${NCU_CONFIG:-} > "$OUT/ncu_details.txt" 2>&1
echo "ncu exit $?"; grep -E "^  [_a-z]|Duration|Registers Per|Achieved Occupancy|Theoretical Occ|Warp Cycles Per Issued|Issue Slots Busy|Memory Throughput|Compute \(SM\)|Stall|stall" "$OUT/ncu_details.txt" | head -150
