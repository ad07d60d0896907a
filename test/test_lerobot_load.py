"""LeRobot itself loads what export-lerobot writes (opt-in: needs a LeRobot install beside our torch).

LeRobot 0.4.4 pins torch < 2.11 and cannot go into our venv; `scripts/lerobot_test_env.sh DIR` installs
it with --no-deps into DIR (plus the few libraries it imports that the venv lacks, and torchcodec, which
needs the system's FFmpeg libraries: libavcodec59 libavformat59 libavdevice59 libavfilter8 on Debian 12).
Then:
    CLASS_ROS_LEROBOT_ENV=DIR python -m pytest test/test_lerobot_load.py
Without CLASS_ROS_LEROBOT_ENV the test is skipped. LeRobot runs in a subprocess with DIR on its path, so
nothing of it leaks into this process.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from class_ros.data.store import EpisodeStore
from training.export_lerobot import export_lerobot
from training.import_lerobot import import_lerobot

ENV = os.environ.get("CLASS_ROS_LEROBOT_ENV")

LOAD = r"""
import json, sys
import numpy as np
from lerobot.datasets.lerobot_dataset import LeRobotDataset
root, out = sys.argv[1], sys.argv[2]
ds = LeRobotDataset("local/export", root=root, video_backend="torchcodec")
fps = ds.meta.fps
# an action chunk per sample, as ACT / Diffusion Policy ask for it (crosses episode ends: padded by LeRobot)
chunked = LeRobotDataset("local/export", root=root, video_backend="torchcodec",
                         delta_timestamps={"action": [i / fps for i in range(16)]})
state = np.stack([ds[i]["observation.state"].numpy() for i in range(len(ds))])
action = np.stack([ds[i]["action"].numpy() for i in range(len(ds))])
cams = ds.meta.video_keys
img = np.stack([(ds[i][cams[0]].numpy().transpose(1, 2, 0) * 255).round().astype(np.uint8) for i in range(len(ds))])
np.savez(out, state=state, action=action, image=img, chunk=chunked[5]["action"].numpy(),
         episodes=np.array([ds.meta.total_episodes]), fps=np.array([fps]))
print(json.dumps({"frames": len(ds), "task": ds[0]["task"], "cameras": cams}))
"""


@pytest.mark.skipif(not ENV, reason="set CLASS_ROS_LEROBOT_ENV to a LeRobot install (scripts/lerobot_test_env.sh)")
@pytest.mark.parametrize("codec", ["h264", "av1"])
def test_lerobot_loads_the_export(realdata, tmp_path, codec):
    import_lerobot(realdata / "lerobot_v3_so101_example", tmp_path / "ds", episodes="4:6", image_size=(96, 96))
    export_lerobot(tmp_path / "ds", tmp_path / "lr", codec=codec)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ENV, os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    proc = subprocess.run([sys.executable, "-c", LOAD, str(tmp_path / "lr"), str(tmp_path / "got.npz")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report == {"frames": 252, "task": "pick and place", "cameras": ["observation.images.wrist"]}
    got = np.load(tmp_path / "got.npz")
    # ours: the re-import of the same export, decoded by PyAV; LeRobot decodes with torchcodec
    import_lerobot(tmp_path / "lr", tmp_path / "back")
    back = EpisodeStore.open(tmp_path / "back")
    assert got["state"].tobytes() == np.asarray(back.array("obs/joint_pos")).tobytes()
    assert got["action"].tobytes() == np.asarray(back.array("action")).tobytes()
    np.testing.assert_array_equal(got["chunk"], np.asarray(back.array("action"))[5:21])
    diff = np.abs(got["image"].astype(int) - np.asarray(back.array("obs/wrist")).astype(int))
    assert diff.max() <= 1, diff.max()  # the same frames (two decoders; float -> uint8 rounding)
    assert int(got["fps"][0]) == 30 and int(got["episodes"][0]) == 2
