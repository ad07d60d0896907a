#!/usr/bin/env bash
# Idempotent set-up: Debian EGL packages, .venv (Python 3.11), pinned deps, ROS 2 wheels when no distro
# is sourced (plus the launch stack and `ros2` command line from ../shared/vendor/ros2 when it is there),
# and the package itself in editable mode. Called by `make setup` (which then runs `make install`, the
# ament prefix in install/); safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv

egl_pkgs="libegl1 libegl-mesa0 libgl1-mesa-dri libgl1"
missing=""
for p in $egl_pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  echo "setup: installing EGL packages:$missing"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing
fi

PY=$(command -v python3.11 || true)
[ -n "$PY" ] || { echo "setup: python3.11 is required (not found on PATH)" >&2; exit 1; }
if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV with $PY"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
fi
PIP="$VENV/bin/pip"

stamp() { sha256sum "$@" | sha256sum | cut -c1-16; }
# No registry has `launch`, `launch_ros` or `ros2`: without a distro they come from the vendored sources.
VENDOR_ROS2=../shared/vendor/ros2
launch_stack=none
if [ -z "${ROS_DISTRO:-}" ] && [ -f "$VENDOR_ROS2/install.sh" ]; then
  launch_stack="vendor$(stamp "$VENDOR_ROS2/install.sh" "$VENDOR_ROS2/README.md")"
fi
want="$(stamp requirements.lock requirements-ros.lock setup.py)-${ROS_DISTRO:-noros}-$launch_stack-$(command -v nvidia-smi >/dev/null && echo gpu || echo cpu)"
if [ "$(cat "$VENV/.setup-stamp" 2>/dev/null)" = "$want" ]; then
  exit 0  # nothing changed since the last set-up
fi

echo "setup: installing pinned Python dependencies (first run takes a few minutes)"
"$PIP" install -q -r requirements.lock
if [ -z "${ROS_DISTRO:-}" ]; then
  echo "setup: no ROS 2 distro sourced; installing the ROS 2 Python wheels"
  "$PIP" install -q -r requirements-ros.lock
  if [ "$launch_stack" != none ]; then
    echo "setup: installing the ROS 2 launch stack (ros2 launch/run/topic/...) from $VENDOR_ROS2"
    bash "$VENDOR_ROS2/install.sh" "$VENV/bin/python"
  else
    echo "setup: no $VENDOR_ROS2; without \`ros2 launch\` use \`class-ros graph\` (the launch tests skip)"
  fi
else
  echo "setup: using the sourced ROS 2 $ROS_DISTRO (rclpy and messages from the distro)"
fi
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
  # faiss-gpu where the registry has a build for this machine; faiss-cpu stays otherwise.
  "$PIP" install -q faiss-gpu-cu12 2>/dev/null && "$PIP" uninstall -q -y faiss-cpu || echo "setup: faiss-gpu not available; using faiss-cpu"
fi
"$PIP" install -q --no-deps -e .
echo "$want" > "$VENV/.setup-stamp"
echo "setup: done"
