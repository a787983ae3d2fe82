"""TensorBoard gets the validation loss, per-class validation Dice and overlay images."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from _data_writers import write_nnunet  # noqa: E402

from unetzoo.cli.main import main  # noqa: E402


@pytest.fixture
def tiny_run(tmp_path, monkeypatch):
    monkeypatch.setenv("UNETZOO_CACHE", str(tmp_path / "cache"))
    root = write_nnunet(tmp_path / "Dataset902_TB", n_train=3, n_test=0, shape=(7, 16, 12))
    out = tmp_path / "run"
    rc = main([
        "train", "--dataset", "nnunet", "--data-root", str(root), "--model", "unet",
        "--model-option", "base_channels=4", "--img-size", "16", "--batch-size", "4",
        "--max-epochs", "2", "--eval-interval", "1", "--num-workers", "0",
        "--val-fraction", "0.34",  # a planned run of 3 cases holds none out by default
        "--output", str(out), "--device", "cpu", "--no-progress", "--no-test",
    ])
    assert rc == 0
    return out


def test_validation_loss_per_class_dice_and_images_reach_tensorboard(tiny_run):
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(
        str(tiny_run / "tensorboard"), size_guidance={event_accumulator.IMAGES: 0}
    )
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    assert {"train/loss", "val/loss", "val/dice", "val/hd95"} <= scalars
    assert {"val/dice/organ", "val/dice/tumour"} <= scalars
    assert [e.step for e in acc.Scalars("val/loss")] == [1, 2]
    assert all(np.isfinite(e.value) and e.value > 0 for e in acc.Scalars("val/loss"))
    images = [t for t in acc.Tags()["images"] if t.startswith("val/overlay/")]
    assert images, acc.Tags()["images"]
    img = acc.Images(images[0])[-1]
    assert img.width > img.height  # ground truth | prediction | errors side by side
    # the validation loss is also in metrics.csv and on the loss plot
    header = (tiny_run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "val_loss" in header


def test_validation_loss_ignores_the_ignore_label(tmp_path, monkeypatch):
    """The validation loss uses the training criterion, so the ignore label is masked."""
    import json

    import torch

    from unetzoo.data import get_dataset
    from unetzoo.engine.logging.tensorboard import validation_loss
    from unetzoo.losses import build_loss
    from unetzoo.models import create_model

    monkeypatch.setenv("UNETZOO_CACHE", str(tmp_path / "cache"))
    root = write_nnunet(tmp_path / "ds", labels=("background", "organ", "ignore"), n_test=0)
    meta = json.loads((root / "dataset.json").read_text())
    assert "ignore" in meta["labels"]
    ds = get_dataset("nnunet", root)
    model = create_model("unet", in_channels=1, num_classes=2, base_channels=4)
    crit = build_loss("ce_dice", 2, ignore_index=ds.ignore_label)
    v = validation_loss(model, ds, "train", ds.cases("train"), crit, 16, 4, torch.device("cpu"))
    assert np.isfinite(v) and v > 0
