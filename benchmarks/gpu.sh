#!/usr/bin/env bash
# Every GPU check in one go (for a lent CUDA machine): the GPU tests, then each benchmark's CUDA mode.
# Usage: OUT=results_dir bash benchmarks/gpu.sh   (results JSON and logs land in $OUT)
#
# The camera-shift gpu preset, in two device commands of at most 9 minutes (benchmarks/camera_shift.py):
#   here:    bash benchmarks/gpu_wheels.sh              # .whl/: the wheels the machine lacks (list and versions
#                                                       # there); .gl/: the EGL Debian packages (README of the
#                                                       # device tool); carry [".gl", ".whl"]
#   device:  bash benchmarks/gpu.sh camera_shift 1      # writes $OUT/camera_shift_part1.log, the part-1 table and
#                                                       # the carry, $OUT/camera_shift_carry.tar.000, .001
#   here:    copy the carry files into .carry/ (git-ignored); bash benchmarks/gpu_wheels.sh --no-faiss
#   device:  bash benchmarks/gpu.sh camera_shift 2      # carry [".gl", ".whl", ".carry"]; prints the whole table
# Rehearsal on a CPU (same shape, smoke size; nothing unpacked or installed):
#   SETUP=0 PY=.venv/bin/python PRESET=rehearsal OUT=/tmp/cs WORK=/tmp/w1 bash benchmarks/gpu.sh camera_shift 1
#   SETUP=0 PY=.venv/bin/python PRESET=rehearsal OUT=/tmp/cs2 WORK=/tmp/w2 CARRY=/tmp/cs ... camera_shift 2
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
PY=${PY:-python3}

if [ "${1:-}" = camera_shift ]; then
  part=${2:?usage: bash benchmarks/gpu.sh camera_shift 1|2}
  preset=${PRESET:-gpu}
  if [ "${SETUP:-1}" = 1 ]; then
    t0=$SECONDS
    for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig  # EGL/GL loaders (the NVIDIA driver brings the vendor)
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      || { echo "camera_shift: installing .whl failed"; exit 1; }
    export PYTHONPATH=/tmp/site:$PYTHONPATH
    egl=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
    [ -f $egl ] && export __EGL_VENDOR_LIBRARY_FILENAMES=$egl
    echo "camera_shift: set-up in $((SECONDS - t0)) s"
  fi
  export MUJOCO_GL=egl PYOPENGL_PLATFORM=egl
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  # Fail in seconds, not minutes, when off-screen rendering does not work.
  $PY -c "from class_ros.sim.env import ArmEnv; e = ArmEnv('lift'); assert e.reset(0)['agentview'].std() > 5; e.close(); print('camera_shift: EGL rendering works')" \
    || { echo "camera_shift: MuJoCo cannot render here (MUJOCO_GL=egl); see README Troubleshooting"; exit 1; }
  carry=$([ "$part" = 1 ] && echo "$OUT" || echo "${CARRY:-.carry}")
  work=${WORK:-/tmp/camera_shift}  # a fresh machine per part; a rehearsal passes one WORK per part
  set -o pipefail
  timeout "${LIMIT:-530}" $PY benchmarks/camera_shift.py --preset "$preset" --part "$part" --out "$work" \
    --carry "$carry" 2>&1 | tee "$OUT/camera_shift_part$part.log"
  rc=$?
  cp "$work/$preset/camera_shift.md" "$OUT/camera_shift_part$part.md"
  cp "$work/$preset/camera_shift.json" "$OUT/camera_shift_part$part.json"
  echo "=== camera_shift part $part: exit $rc"
  exit $rc
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt"
step() { local name=$1 limit=$2; shift 2; echo "=== $name"; local t0=$SECONDS
  timeout "$limit" "$@" 2>&1 | tail -n 40 | tee "$OUT/$name.log"; echo "=== $name: exit ${PIPESTATUS[0]} in $((SECONDS - t0)) s"; }
step gpu_tests 150 $PY -m pytest test/test_dtw_gpu.py test/test_encoder.py test/test_diffusion.py -m gpu -q -p no:cacheprovider
step encoder_cuda 90 $PY benchmarks/encoder.py --device cuda --out "$OUT/encoder_cuda.json"
step diffusion_cuda 120 $PY benchmarks/diffusion.py --device cuda --out "$OUT/diffusion_cuda.json"
step retrieval_cuda 60 $PY benchmarks/retrieval.py --device cuda --quick --out "$OUT/retrieval_cuda.json"
step dtw_cuda 240 $PY benchmarks/dtw.py --device cuda --n 200000 --out "$OUT/dtw_cuda.json"
