#!/usr/bin/env bash
# One GPU call: the named benchmarks through run.py, outputs under $OUT (the device tool's folder)
# or benchmarks/out/. Run from the repo root on the GPU machine with .whl and .baselines carried
# (and .data when a benchmark reads the shared data):
#   bash benchmarks/gpu.sh                      # conv norm embed scan pretrain (the README's tables)
#   bash benchmarks/gpu.sh tests scan           # GPU tests first, then the scan table
#   bash benchmarks/gpu.sh scan -- --compare benchmarks/out/rev/SHA   # options after -- go to run.py
#   bash benchmarks/gpu.sh ddp                  # 1 vs 2 GPUs, same pretraining run (nvidia-h200-x2)
# Names: anything `python benchmarks/run.py list` shows, plus `tests` (pytest -m gpu) and `ddp`.
# Benchmarks whose baseline needs mamba_ssm run last, after its background build has finished.
cd "$(dirname "$0")/.."
names=(); pass=()
while [ $# -gt 0 ]; do
  if [ "$1" = "--" ]; then shift; pass=("$@"); break; fi
  names+=("$1"); shift
done
[ ${#names[@]} -eq 0 ] && names=(conv norm embed scan pretrain)
mamba=(); plain=()
for n in "${names[@]}"; do
  case $n in scan|pretrain|caduceus) mamba+=("$n") ;; *) plain+=("$n") ;; esac
done
source benchmarks/device_setup.sh ${mamba:+--mamba}
export MAMBADNA_COMMIT=${MAMBADNA_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
OUTDIR=${OUT:-benchmarks/out}; mkdir -p "$OUTDIR"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
rc=0
run() {
  case $1 in
    tests) timeout ${TESTS_S:-300} python3 -m pytest -q -m gpu tests 2>&1 | tail -5 ;;
    ddp)
      G=${MAMBADNA_SHARED_DATA:-../shared/data}/genomes/GCF_000005845.2_ASM584v2_genomic.fna.gz
      ARGS="--seq-len ${L:-32768} --batch-size 8 --micro-batch-size 2 --max-steps ${STEPS:-20} --d-model 256
            --n-layers 16 --lr 2e-3 --warmup-steps 3 --val-fraction 0.25 --eval-every 1000 --eval-batches 1
            --save-every 1000 --no-progress --seed 1"
      CUDA_VISIBLE_DEVICES=0 mambadna pretrain "$G" --out /tmp/runs/gpu1 $ARGS 2>&1 | tail -3
      mambadna pretrain "$G" --out /tmp/runs/gpu2 $ARGS --gpus 2 2>&1 | tail -3
      python3 benchmarks/evals/compare_runs.py /tmp/runs/gpu1 /tmp/runs/gpu2 --gpus 1,2 --skip 1 \
        | tee "$OUTDIR/ddp.md" ;;
    *) python3 benchmarks/run.py "$1" --out "$OUTDIR" "${pass[@]}" || rc=1 ;;
  esac
}
for n in "${plain[@]}"; do run "$n"; done
if [ ${#mamba[@]} -gt 0 ]; then
  [ -n "${MAMBA_BUILD_PID:-}" ] && wait "$MAMBA_BUILD_PID"
  tail -1 /tmp/mamba_build.log 2>/dev/null
  export PYTHONPATH=/tmp/mamba_site:$PYTHONPATH
  for n in "${mamba[@]}"; do run "$n"; done
fi
exit $rc
