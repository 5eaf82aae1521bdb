#!/usr/bin/env bash
# Issues 3 and 4, one GPU call, for the two changes made without a GPU (session 6):
#  (a) the GPU tests of the fused RMSNorm and of the Gluon backward kernel;
#  (b) bench_norm.py: fused RMSNorm against the PyTorch ops;
#  (c) A/B of the scan backward: Triton kernel (default) against the Gluon kernel
#      (CONFIG bwd_impl "gluon"), forward+backward at (8,512,16,131072) and (64,512,16,1024),
#      and the bidirectional layer;
#  (d) one training step of the 16 x 256 model at 1 x 131072 profiled (norm fusion's effect),
#      with each backward.
# Run from the repo root on the device with .whl carried.
source benchmarks/device_setup.sh
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name --format=csv,noheader
python3 -m pytest -q -m gpu tests/test_norm_triton.py tests/test_scan_triton.py -k "norm or gluon or realistic" 2>&1 | tail -4
python3 benchmarks/bench_norm.py 2>&1 | tee "$OUT/bench_norm.log"
python3 benchmarks/ab_scan.py --variant triton=kernels/triton_scan.py:'{"bwd_impl": "triton", "ckpt": 4, "gluon_mask_bc": true}' \
  --variant gluon=kernels/triton_scan.py:'{"bwd_impl": "gluon", "ckpt": 4, "gluon_mask_bc": true}' --shapes ${AB_SHAPES:-0,3} 2>&1 | tail -20 | tee "$OUT/ab_gluon.log"
python3 benchmarks/ab_scan.py --variant triton=kernels/triton_scan.py:'{"bwd_impl": "triton", "ckpt": 4, "gluon_mask_bc": true}' \
  --variant gluon=kernels/triton_scan.py:'{"bwd_impl": "gluon", "ckpt": 4, "gluon_mask_bc": true}' --shapes 0 --bidir 2>&1 | tail -8 | tee -a "$OUT/ab_gluon.log"
python3 benchmarks/profile_model.py --rows 12 2>&1 | tee "$OUT/profile_model_norm.log" | head -20
python3 benchmarks/profile_model.py --rows 0 --scan-config '{"bwd_impl": "gluon"}' 2>&1 | head -2
