#!/usr/bin/env bash
# Session 8, fifth GPU call, with the session's defaults (Gluon backward reusing the
# forward step's decay, rows prefetched 4 ahead): the GPU tests (scan, conv, norm,
# embeddings), then E. coli pretraining of the 16 x 256 bidirectional model at 2^20
# with --layer-chunk 524288 --residual-bf16 (the loss must fall; peak memory).
# Run from the repo root on the device with .whl and .gpudata carried.
source benchmarks/device_setup.sh
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT" /tmp/runs
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
timeout 150 python3 -m pytest -q -m gpu tests/test_scan_triton.py tests/test_conv_triton.py tests/test_norm_triton.py \
  tests/test_embed.py -k "not gluon_backward" 2>&1 | tail -3
G=.gpudata/GCF_000005845.2_ASM584v2_genomic.fna.gz
L=1048576
timeout ${PRETRAIN_S:-200} mambadna pretrain $G --out /tmp/runs/ecoli_$L --seq-len $L --batch-size 1 \
  --d-model 256 --n-layers 16 --max-steps ${STEPS:-12} --lr 2e-3 --warmup-steps 3 --val-fraction 0.25 \
  --eval-batches 1 --eval-every ${STEPS:-12} --save-every 1000 --no-progress \
  --layer-chunk 524288 --residual-bf16 2>&1 | grep -v "^pretrain" | tail -3
cp /tmp/runs/ecoli_$L/metrics.jsonl "$OUT/metrics_ecoli_$L.jsonl" 2>/dev/null
python3 benchmarks/metrics_summary.py /tmp/runs/ecoli_$L/metrics.jsonl "E. coli 2^20"
