#!/usr/bin/env bash
# (Ran before gluon_lpc and bwd_bc_fp32 were removed, which both lost; to re-run those variants
# check out a351b22. ab_scan.py now rejects CONFIG keys that no longer exist.)
# Issue 3 (and 4), one GPU call, session 7: the Gluon backward's layout variants.
#  (a) GPU tests: scan (Gluon variants, realistic shapes), norm, conv;
#  (b) A/B of the backward at (8,512,16,131072) and (64,512,16,1024): Triton kernel,
#      Gluon with 1 or 2 lanes a channel, masked or clamped B/C rows, fp32 B/C copies,
#      checkpoints every 2;
#  (c) Nsight Compute on the Gluon backward (stall reasons), GLUON_NCU config;
#  (d) bench_conv.py (the one-pass conv backward) and the model-step profile.
# Run from the repo root on the device with .whl carried.
source benchmarks/device_setup.sh
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name --format=csv,noheader
python3 -m pytest -q -m gpu tests/test_scan_triton.py tests/test_norm_triton.py tests/test_conv_triton.py 2>&1 | tail -4
T=kernels/triton_scan.py
S6='"bwd_impl": "triton", "ckpt": 4, "gluon_mask_bc": true'  # the session-6 defaults this A/B started from
G="$S6, \"bwd_impl\": \"gluon\""  # JSON: the last duplicate key wins
python3 benchmarks/ab_scan.py --variant triton=$T:"{$S6}" \
  --variant g1=$T:"{$G}" \
  --variant g1_clamp=$T:"{$G, \"gluon_mask_bc\": false}" \
  --variant g1_bc32=$T:"{$G, \"bwd_bc_fp32\": true}" \
  --variant g2=$T:"{$G, \"gluon_lpc\": 2}" \
  --variant g2_bc32_clamp=$T:"{$G, \"gluon_lpc\": 2, \"bwd_bc_fp32\": true, \"gluon_mask_bc\": false}" \
  --variant g1_ckpt2=$T:"{$G, \"ckpt\": 2}" \
  --shapes ${AB_SHAPES:-0,3} 2>&1 | tail -20 | tee "$OUT/ab_gluon_variants.log"
python3 benchmarks/bench_conv.py 2>&1 | tee "$OUT/bench_conv.log"
python3 benchmarks/profile_model.py --rows 22 --scan-config "{$G}" 2>&1 | grep -v Warn | tee "$OUT/profile_model.log" | head -24
ncu --clock-control none -k regex:'_gluon_bwd' --launch-count 1 \
  --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
  --section SchedulerStats --section InstructionStats \
  python3 benchmarks/scan_once.py 8 512 16 16384 "${GLUON_NCU:-{$G}}" > "$OUT/ncu_gluon.txt" 2>&1
grep -E "Duration|Registers Per|Achieved Occupancy|Warp Cycles Per Issued|Issue Slots Busy|Compute \(SM\)|Stall|stall" "$OUT/ncu_gluon.txt" | head -40
