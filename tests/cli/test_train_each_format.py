"""`unetzoo train` (then its automatic test) reads every dataset format end to end.

The readers have their own tests in tests/data; this checks that the pipeline consumes
each format's samples and cases (split names, channels, class counts, 2-D cases).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from _data_writers import (  # noqa: E402
    write_acdc,
    write_drive,
    write_folder,
    write_nnunet,
    write_synapse,
)

from unetzoo.cli.main import main  # noqa: E402

WRITERS = {
    "synapse": lambda root: write_synapse(root, size=16, train_cases=(5, 6, 7)),
    "acdc": lambda root: write_acdc(root, size=16),
    "drive": lambda root: write_drive(root, size=(20, 18), n_train=3),
    "folder": lambda root: write_folder(root, n=3, size=(16, 20), splits=("train", "test")),
    "nnunet": lambda root: write_nnunet(root, n_train=3, shape=(7, 16, 12)),
}


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_train_and_test_on_each_format(name, tmp_path):
    root = WRITERS[name](tmp_path / name)
    out = tmp_path / "run"
    rc = main([
        "train", "--dataset", name, "--data-root", str(root), "--model", "unet",
        "--model-option", "base_channels=4", "--img-size", "16", "--batch-size", "2",
        "--max-epochs", "1", "--eval-interval", "1", "--num-workers", "0",
        "--output", str(out), "--device", "cpu", "--no-progress",
    ])
    assert rc == 0
    assert (out / "checkpoints" / "best.pt").is_file()
    summary = json.loads((out / "report" / "summary.json").read_text())
    assert summary["dataset"] == name and summary["split"] == "test"
    assert summary["cases"] >= 1
    assert 0.0 <= summary["mean_dice"] <= 1.0
