#!/usr/bin/env bash
# A test-only LeRobot install beside the venv's torch, for test/test_lerobot_load.py (never into .venv).
#
# Usage: scripts/lerobot_test_env.sh DIR        then: CLASS_ROS_LEROBOT_ENV=DIR .venv/bin/python -m pytest test/test_lerobot_load.py
#
# lerobot 0.4.4 pins torch < 2.11 (the venv has 2.14), so it and the libraries it imports that the venv
# lacks go into DIR with --no-deps. Its video decoding needs torchcodec (torchvision's VideoReader is gone),
# and torchcodec loads the system's FFmpeg libraries: on Debian 12
#   apt-get install libavcodec59 libavformat59 libavdevice59 libavfilter8 libswscale6 libswresample4 libavutil57
set -euo pipefail
DIR=${1:?usage: $0 DIR}
PIP="$(dirname "$0")/../.venv/bin/pip"
"$PIP" install --no-deps --target "$DIR" lerobot==0.4.4 datasets==4.8.5 dill==0.4.1 xxhash==4.1.0 \
  multiprocess==0.70.19 draccus==0.10.0 mergedeep==1.3.4 pyyaml-include==2.2 toml==0.10.2 typing-inspect==0.9.0 \
  mypy-extensions==1.2.0 deepdiff==9.1.0 orderly-set==5.5.0 imageio==2.38.2 jsonlines==4.0.0 attrs==26.1.0 \
  einops==0.8.2 accelerate==1.15.0 termcolor==3.3.0 torchcodec==0.17.0 httpx==0.28.1 httpcore==1.0.9
echo "LeRobot test environment in $DIR"
