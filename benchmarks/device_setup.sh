# Source on a GPU machine with no package registry, from the repo root:
#   source benchmarks/device_setup.sh [--mamba]
# Makes `mambadna` importable and runnable from the working tree (the package assembled in /tmp/pkg
# as pyproject's package-dir maps it: kernels/ -> mambadna.kernels, cli/ -> mambadna.cli), installs
# the carried wheels (.whl/: pysam, typer, ... that the machine lacks) into /tmp/site, and with
# --mamba starts the mamba_ssm build from .baselines/ (or ../shared/baselines) in the background:
# it lands in /tmp/mamba_site, log /tmp/mamba_build.log, pid $MAMBA_BUILD_PID (gpu.sh waits on it).
set -e
ROOT=$(pwd)
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl >/dev/null 2>&1 || true
fi
rm -rf /tmp/pkg && mkdir -p /tmp/pkg/mambadna
cp -r "$ROOT"/mambadna/. /tmp/pkg/mambadna/
cp -r "$ROOT"/kernels /tmp/pkg/mambadna/kernels
cp -r "$ROOT"/cli /tmp/pkg/mambadna/cli
export PYTHONPATH=/tmp/pkg:/tmp/site${PYTHONPATH:+:$PYTHONPATH}
mkdir -p /tmp/bin && printf '#!/bin/sh\nexec python3 -P -m mambadna.cli "$@"\n' > /tmp/bin/mambadna && chmod +x /tmp/bin/mambadna
export PATH=/tmp/bin:$PATH
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
export PYTHONSAFEPATH=1  # the repo root (cwd) must not shadow the assembled package in /tmp/pkg
# shared data: ../shared/data beside the repo, else the carried copy .data/
if [ -z "${MAMBADNA_SHARED_DATA:-}" ] && [ ! -d ../shared/data ] && [ -d .data ]; then
  export MAMBADNA_SHARED_DATA=$ROOT/.data
fi
BASELINES=.baselines; [ -d "$BASELINES" ] || BASELINES=../shared/baselines
if [ "${1:-}" = "--mamba" ] && [ -d "$BASELINES" ]; then
  (cd "$BASELINES" && bash build_mamba_ssm.sh /tmp/mamba_site > /tmp/mamba_build.log 2>&1; echo "mamba_ssm build exit $?" >> /tmp/mamba_build.log) &
  MAMBA_BUILD_PID=$!
fi
set +e
