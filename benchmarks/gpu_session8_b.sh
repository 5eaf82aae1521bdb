#!/usr/bin/env bash
# (Ran before gluon_lpc and bwd_bc_fp32 were removed, which both lost; to re-run those variants
# check out a351b22. ab_scan.py now rejects CONFIG keys that no longer exist.)
# Session 8, second GPU call: the Gluon backward with the forward step's decay reused
# (gluon_reuse) and row/checkpoint prefetch in the backward only (prefetch_bwd):
#  (a) GPU tests of every Gluon variant; (b) A/B incl. bidirectional fwd+bwd and reverse
#  forward; (c) per-kernel profile of one fwd+bwd at (8, 512, 16, 131072) (PROFILE_CFG).
source benchmarks/device_setup.sh
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 170 python3 -m pytest -q -m gpu tests/test_scan_triton.py -k "gluon_backward" 2>&1 | tail -3
T=kernels/triton_scan.py
timeout 330 python3 benchmarks/ab_scan.py --variant off=$T \
  --variant reuse=$T:'{"gluon_reuse": true}' \
  --variant pfb2=$T:'{"prefetch_bwd": 2}' \
  --variant reuse_pfb2=$T:'{"gluon_reuse": true, "prefetch_bwd": 2}' \
  --variant reuse_pfb4=$T:'{"gluon_reuse": true, "prefetch_bwd": 4}' \
  --variant reuse_pfb2L1=$T:'{"gluon_reuse": true, "prefetch_bwd": 2, "prefetch_level": "L1"}' \
  --variant reuse_lpc2=$T:'{"gluon_reuse": true, "gluon_lpc": 2}' \
  --rep ${REP:-60} --shapes ${AB_SHAPES:-0,3} --bidir 2>&1 | tee "$OUT/ab_s8b.log" | tail -26
timeout 60 python3 benchmarks/ab_scan.py --variant off=$T --variant mp512=$T:'{"min_programs": 512}' \
  --variant mp256=$T:'{"min_programs": 256}' --rep 200 --shapes 3,2 --reverse 2>&1 | tee "$OUT/ab_s8b_small.log" | tail -10
timeout 60 python3 benchmarks/bench_scan.py --profile-only --shapes 0 --config "${PROFILE_CFG:-{\"gluon_reuse\": true, \"prefetch_bwd\": 2\}}" --out "$OUT" 2>&1 | tail -16
