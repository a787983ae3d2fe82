"""nnU-Net v2's ignore label: not a class, masked out of the loss and the metrics."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data_writers import write_nnunet  # noqa: E402

from unetzoo.cli.main import main  # noqa: E402
from unetzoo.data import get_dataset  # noqa: E402
from unetzoo.errors import DataError  # noqa: E402

LABELS = ("background", "organ", "ignore")


def _ignore_root(tmp_path: Path, **kw) -> Path:
    root = write_nnunet(tmp_path / "Dataset900_Ign", labels=LABELS, **kw)
    meta = json.loads((root / "dataset.json").read_text())
    meta["name"] = "Tiny masked set"
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_ignore_is_not_a_class(tmp_path):
    ds = get_dataset("nnunet", _ignore_root(tmp_path))
    assert ds.class_names == ["background", "organ"]
    assert ds.num_classes == 2 and ds.ignore_label == 2
    case = ds.load_case(ds.cases("train")[0], "train")
    assert case.ignore_label == 2 and (case.label == 2).any()  # kept for loss and metrics
    sample = ds.slice_dataset("train")[0]
    assert int(sample["label"].max()) <= 2


@pytest.mark.parametrize("labels", [
    {"background": 0, "ignore": 1, "organ": 2},  # ignore must be the highest value
    {"background": 0, "organ": [1, 2], "tumour": 2},  # regions stay refused
])
def test_misplaced_ignore_and_regions_are_one_line(tmp_path, labels):
    root = _ignore_root(tmp_path)
    meta = json.loads((root / "dataset.json").read_text())
    meta["labels"] = labels
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="ignore|region"):
        get_dataset("nnunet", root)


def test_ignored_pixels_change_neither_loss_nor_metrics(tmp_path):
    from unetzoo.losses import build_loss
    from unetzoo.metrics import Reference, ScoringRules, score_case

    ds = get_dataset("nnunet", _ignore_root(tmp_path))
    case = ds.load_case(ds.cases("train")[0], "train")
    ign = case.label == ds.ignore_label

    # loss: logits under ignored pixels do not matter
    loss = build_loss("ce_dice", ds.num_classes, ignore_index=ds.ignore_label)
    target = torch.from_numpy(case.label[:1])
    logits = torch.randn(1, 2, *target.shape[1:])
    other = logits.clone()
    other[:, :, torch.from_numpy(ign[:1])[0]] = 50.0 * torch.randn(1).abs()
    a, _ = loss(logits, target)
    b, _ = loss(other, target)
    assert torch.allclose(a, b)

    # metrics: the prediction under ignored pixels does not matter, and the score is that
    # of the arrays with those pixels removed (nnU-Net's evaluator)
    rng = np.random.default_rng(0)
    pred = rng.integers(0, 2, case.label.shape)
    flipped = np.where(ign, 1 - pred, pred)
    ref, rules = Reference.of_case(case), ScoringRules(ds.num_classes)
    m1 = score_case(pred, ref, rules).by_class()
    m2 = score_case(flipped, ref, rules).by_class()
    assert m1[1]["dice"] == pytest.approx(m2[1]["dice"])
    keep = ~ign
    p, g = pred[keep] == 1, case.label[keep] == 1
    assert m1[1]["dice"] == pytest.approx(2 * (p & g).sum() / (p.sum() + g.sum()))
    assert set(m1) == {1}


def test_ignore_dataset_trains_through_the_cli_and_reports_real_classes(tmp_path):
    root = _ignore_root(tmp_path, n_train=3, shape=(7, 16, 12))
    out = tmp_path / "run"
    rc = main([
        "train", "--dataset", "nnunet", "--data-root", str(root), "--model", "unet",
        "--model-option", "base_channels=4", "--img-size", "16", "--batch-size", "2",
        "--max-epochs", "1", "--eval-interval", "1", "--num-workers", "0",
        "--output", str(out), "--device", "cpu", "--no-progress",
    ])
    assert rc == 0
    summary = json.loads((out / "report" / "summary.json").read_text())
    assert list(summary["per_class"]) == ["organ"]
    report = (out / "report" / "summary.md").read_text()
    assert "ignore" not in report
    assert report.startswith("# Test of unet on Tiny masked set (test)")
    from unetzoo.engine.checkpoint import read_checkpoint

    ck = read_checkpoint(out / "checkpoints" / "best.pt")
    assert list(ck.spec.class_names) == ["background", "organ"]
    head = [v for k, v in ck.weights.items() if v.ndim == 4][-1]
    assert head.shape[0] == 2  # real-class outputs only


@pytest.mark.parametrize("recipe", ["default", "synapse"])
def test_augmentation_and_resizing_keep_the_ignore_value(recipe):
    from unetzoo.data.transforms import build_eval_transform, build_train_transform

    rng = np.random.default_rng(0)
    label = np.zeros((20, 20), np.int64)
    label[:, :10] = 2  # the ignore value
    label[5:15, 12:18] = 1
    image = rng.normal(size=(1, 20, 20)).astype(np.float32)
    for t in (build_train_transform(recipe, 16), build_eval_transform(16)):
        for _ in range(5):
            _, lab = t(image, label, rng)
            assert set(np.unique(lab)) <= {0, 1, 2} and (lab == 2).any()
