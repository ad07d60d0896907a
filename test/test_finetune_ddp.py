"""`class-ros finetune` under torchrun: 2 gloo processes train one policy, rank 0 writes the run."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # two torch processes start and train: about 20 s idle, more on a busy machine
def test_two_process_ddp_run(tmp_path):
    from class_ros.data.rundir import config_to_dict
    from latent_dataset import make_latent_dataset
    from class_ros.policy import load_policy
    from test_finetune import tiny_config

    store = make_latent_dataset(tmp_path / "data", n_episodes=3, length=12, size=16)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config_to_dict(tiny_config(steps=3))))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "training.finetune", "--dataset", str(tmp_path / "data"), "--init", "none",
         "--out", str(tmp_path / "dp"), "--config", str(tmp_path / "cfg.yaml"), "--device", "cpu"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("finetune: wrote run") == 1  # only rank 0 reports and writes
    meta = json.loads((tmp_path / "dp" / "manifest.json").read_text())
    assert meta["extra"]["world_size"] == 2
    summary = meta["finetune_summary"]
    assert summary["world_size"] == 2 and summary["steps_this_call"] == 3 and np.isfinite(summary["loss_last"])
    policy = load_policy(tmp_path / "dp", kind="diffusion")
    obs = {"cam": store.read("obs/cam", np.array([0]))[0], "state": store.read("obs/state", np.array([0]))[0]}
    assert np.isfinite(policy.predict_action_chunk(obs)).all()
