#!/usr/bin/env bash
# Where the scan's time goes, on the GPU: torch.profiler per kernel at the two big shapes, then
# Nsight Compute (clocks left alone) on every scan kernel of one forward+backward at NCU_SHAPE:
# speed of light, occupancy, warp stall reasons. Run from the repo root on the device:
#   bash benchmarks/tools/ncu_scan.sh          (NCU_SHAPE="8 512 16 16384" NCU_CONFIG='{...}' optional)
source benchmarks/device_setup.sh
OUT=${OUT:-benchmarks/out/ncu}; mkdir -p "$OUT"
python3 benchmarks/bench_scan.py --profile --shapes 0,3 ${PROFILE_ARGS:-} 2>&1 | tee "$OUT/profile_scan.log" | tail -80
SHAPE=${NCU_SHAPE:-"8 512 16 16384"}
ncu --clock-control none -k regex:'_rows_|_chunk_combine|_gluon_bwd' --launch-skip ${NCU_SKIP:-0} \
  --launch-count ${NCU_COUNT:-12} --section SpeedOfLight --section Occupancy --section LaunchStats \
  --section WarpStateStats --section SchedulerStats --section MemoryWorkloadAnalysis --section InstructionStats \
  python3 benchmarks/tools/scan_once.py $SHAPE ${NCU_CONFIG:-} > "$OUT/ncu_details.txt" 2>&1
echo "ncu exit $?"
grep -E "^  [_a-z]|Duration|Registers Per|Achieved Occupancy|Theoretical Occ|Warp Cycles Per Issued|Issue Slots Busy|Memory Throughput|Compute \(SM\)|Stall|stall" \
  "$OUT/ncu_details.txt" | head -150
