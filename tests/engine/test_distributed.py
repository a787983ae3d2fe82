"""DDP: two CPU processes (gloo) under torchrun train a few steps of the tiny phantom."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml


@pytest.mark.slow
def test_torchrun_two_cpu_processes(tiny_root, tmp_path):
    out = tmp_path / "ddp"
    cfg = {
        "dataset": "phantom",
        "data_root": str(tiny_root),
        "dataset_options": {"n_train": 3, "n_test": 1, "shape": [4, 32, 32], "seed": 0},
        "model": "unet",
        "model_options": {"base_channels": 4},
        "img_size": 32,
        "batch_size": 4,
        "max_epochs": 2,
        "eval_interval": 1,
        "output": str(out),
        "device": "cpu",
        "test": False,
        "progress": False,
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "unetzoo", "train", "--config", str(tmp_path / "c.yaml")],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 processes" in proc.stdout
    assert proc.stdout.count("epoch 2/2:") == 1  # rank 0 logs alone
    from unetzoo.engine.checkpoint import read_checkpoint

    ck = read_checkpoint(out / "checkpoints" / "latest.pt").train_state
    # 8 training slices, batch 4, 2 ranks: the sampler gives each rank 4 slices, so one
    # iteration per epoch (a single process takes two).
    assert ck.epoch == 2 and ck.iteration == 2
    rows = (out / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 3 and Path(out / "config.yaml").is_file()
