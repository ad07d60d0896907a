#!/usr/bin/env bash
# Every GPU check in one go (for a lent CUDA machine): the GPU tests, then each benchmark's CUDA mode.
# Usage: OUT=results_dir bash benchmarks/gpu.sh   (results JSON and logs land in $OUT)
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
PY=${PY:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt"
step() { local name=$1 limit=$2; shift 2; echo "=== $name"; local t0=$SECONDS
  timeout "$limit" "$@" 2>&1 | tail -n 40 | tee "$OUT/$name.log"; echo "=== $name: exit ${PIPESTATUS[0]} in $((SECONDS - t0)) s"; }
step gpu_tests 150 $PY -m pytest test/test_dtw_gpu.py test/test_encoder.py test/test_diffusion.py -m gpu -q -p no:cacheprovider
step encoder_cuda 90 $PY benchmarks/encoder.py --device cuda --out "$OUT/encoder_cuda.json"
step diffusion_cuda 120 $PY benchmarks/diffusion.py --device cuda --out "$OUT/diffusion_cuda.json"
step retrieval_cuda 60 $PY benchmarks/retrieval.py --device cuda --quick --out "$OUT/retrieval_cuda.json"
step dtw_cuda 240 $PY benchmarks/dtw.py --device cuda --n 200000 --out "$OUT/dtw_cuda.json"
