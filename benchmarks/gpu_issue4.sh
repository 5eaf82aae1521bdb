#!/usr/bin/env bash
# Issues 4 and 6 on one GPU, one call (run from the repo root on the device with
# .whl, .baselines and .gpudata carried):
#  (a) E. coli pretraining of the 16 x 256 bidirectional model at 2^20 with
#      --layer-chunk and the bf16 residual (loss must fall; peak memory);
#  (b) bench_pretrain.py: mambadna vs mamba_ssm Caduceus-style vs SDPA, and
#      mambadna against length;
#  (c) chunked exact embeddings of 1 / 4 / 10 Mb (GPU memory must stay flat).
source benchmarks/device_setup.sh --mamba
G=.gpudata/GCF_000005845.2_ASM584v2_genomic.fna.gz
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT" /tmp/runs
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
L=1048576
timeout ${PRETRAIN_S:-170} mambadna pretrain $G --out /tmp/runs/ecoli_$L --seq-len $L --batch-size 1 \
  --d-model 256 --n-layers 16 --max-steps ${STEPS:-12} --lr 2e-3 --warmup-steps 3 --val-fraction 0.25 \
  --eval-batches 1 --eval-every ${STEPS:-12} --save-every 1000 --no-progress \
  --layer-chunk ${LAYER_CHUNK:-131072} --residual-bf16 2>&1 | grep -v "^pretrain" | tail -3
cp /tmp/runs/ecoli_$L/metrics.jsonl "$OUT/metrics_ecoli_$L.jsonl" 2>/dev/null
python3 benchmarks/metrics_summary.py /tmp/runs/ecoli_$L/metrics.jsonl "E. coli 2^20"
wait $MAMBA_BUILD_PID; tail -1 /tmp/mamba_build.log
PYTHONPATH=/tmp/mamba_site:$PYTHONPATH timeout ${BENCH_S:-300} python3 benchmarks/bench_pretrain.py --out "$OUT" --reps ${REPS:-2}
[ "${EMBED_S:-100}" -gt 0 ] && timeout ${EMBED_S:-100} python3 benchmarks/bench_embed.py --windows "" --json "$OUT/bench_embed_chunked.json"
