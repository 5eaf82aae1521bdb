#!/usr/bin/env bash
# Issue 4 on two GPUs (nvidia-h200-x2), one call: the same pretraining run on 1 GPU
# and on 2 GPUs through torchrun (`--gpus 2`) with the same global batch; prints the
# loss curves side by side and the scaling efficiency in tokens/s.
# Run from the repo root with .whl and .gpudata carried.
source benchmarks/device_setup.sh
G=.gpudata/GCF_000005845.2_ASM584v2_genomic.fna.gz
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT" /tmp/runs
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
echo "NCCL_NVLS_ENABLE=$NCCL_NVLS_ENABLE TORCH_SYMM_MEM_DISABLE_MULTICAST=$TORCH_SYMM_MEM_DISABLE_MULTICAST"
ARGS="--seq-len ${L:-32768} --batch-size ${B:-8} --micro-batch-size ${MB:-2} --max-steps ${STEPS:-20} --d-model 256 --n-layers 16 --lr 2e-3
      --warmup-steps 3 --val-fraction 0.25 --eval-every 1000 --eval-batches 1 --save-every 1000 --no-progress --seed 1"
CUDA_VISIBLE_DEVICES=0 mambadna pretrain $G --out /tmp/runs/gpu1 $ARGS 2>&1 | grep -v "^pretrain" | tail -25
mambadna pretrain $G --out /tmp/runs/gpu2 $ARGS --gpus 2 2>&1 | grep -v "^pretrain" | tail -25
cp /tmp/runs/gpu1/metrics.jsonl "$OUT/metrics_1gpu.jsonl"; cp /tmp/runs/gpu2/metrics.jsonl "$OUT/metrics_2gpu.jsonl"
python3 -P benchmarks/compare_runs.py /tmp/runs/gpu1 /tmp/runs/gpu2 --gpus 1,2 --skip 1
