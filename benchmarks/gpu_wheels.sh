#!/usr/bin/env bash
# Fetch (here, where PyPI is reachable) the wheels the lent GPU machine lacks, for its Python 3.12, into .whl/
# (git-ignored). benchmarks/gpu.sh installs them there with `pip install --no-index --target`.
# The machine's image already holds torch 2.11, numpy, scipy, numba, h5py, opencv, safetensors, pyyaml, tqdm,
# huggingface-hub, tensorboard, psutil, pillow, requests, regex, filelock, packaging, typing-extensions, zipp.
# Usage: bash benchmarks/gpu_wheels.sh [--no-faiss]   (--no-faiss: the set for camera_shift part 2)
set -eu
cd "$(dirname "$0")/.."
# name==version, as requirements.lock pins them (what the project's venv runs), plus their missing needs.
WHEELS=(
  # mujoco-studio (12.8 MB, the viewer; `import mujoco` and its EGL Renderer run without it) stays behind.
  mujoco==4.0.0 mujoco-core==4.0.0 glfw==2.11.0 pyopengl==3.1.10
  rosbags==0.11.9 apsw==3.54.1.0 backports.zstd==1.8.0 lz4==4.4.5 ruamel.yaml==0.19.1
  zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0
  diffusers==0.42.1 importlib_metadata==10.2.0 lazy-importer==0.1.0
)
# faiss-cpu (18.8 MB) only where retrieval runs: camera_shift part 1 (part 2 carries the CLASS run instead).
[ "${1:-}" = "--no-faiss" ] || WHEELS+=(faiss-cpu==1.15.1)
PY=${PY:-.venv/bin/python}
rm -rf .whl && mkdir -p .whl
platforms=()
for n in 39 35 34 31 28 27 24 17; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
for w in "${WHEELS[@]}"; do
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d .whl "$w"
done
ls -la .whl
# What a device command carries: the tracked tree, .gl, .whl and (camera_shift part 2) .carry; 64 MiB at most.
tree=$(git ls-files -z | xargs -0 cat | wc -c)
extra=$(cat .whl/* .gl/* .carry/* 2>/dev/null | wc -c)
echo "carry: tracked tree $((tree >> 20)) MiB + .whl/.gl/.carry $((extra >> 20)) MiB = $(((tree + extra) >> 20)) MiB of 64"
[ $((tree + extra)) -lt $((64 << 20)) ] || { echo "over the 64 MiB a device command may take"; exit 1; }
