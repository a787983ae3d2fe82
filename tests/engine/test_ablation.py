"""Ablation runner: rung selection, MAC counting, tables, and a tiny phantom ladder that
is interrupted mid-rung and resumed without retraining the finished rung."""

from __future__ import annotations

import csv
import json

import pytest
from torch import nn

from unetzoo.cli.main import main as cli_main
from unetzoo.data import get_dataset
from unetzoo.engine import ablation, trainer
from unetzoo.engine.checkpoint import read_checkpoint
from unetzoo.errors import ConfigError, UnetzooError

TINY = {
    "img_size": 32,
    "batch_size": 4,
    "max_epochs": 2,
    "eval_interval": 1,
    "val_cases": 1,
    "test_max_cases": 1,
    "progress": False,
    "model_options": {"encoder": "resnet18", "width_scale": 0.125},
}


def test_ladder_rungs_selection():
    assert ablation.ladder_rungs("resunet")[0] == "resunet_v0_1"
    assert len(ablation.ladder_rungs("resunet")) == 8
    picked = ablation.ladder_rungs("resunet", ["1.0", "v0_3,resunet_v0_1"])
    assert picked == ["resunet_v0_1", "resunet_v0_3", "resunet_v1_0"]  # ladder order
    with pytest.raises(ConfigError, match="no rung"):
        ablation.ladder_rungs("resunet", ["v9_9"])
    with pytest.raises(ConfigError, match="unknown ladder"):
        ablation.ladder_rungs("vgg")


def test_count_macs_is_multiply_adds():
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.Conv2d(4, 1, 1))
    assert ablation.count_macs(model, 2, 8) == 8 * 8 * (9 * 2 * 4 + 4 * 1)


def test_cli_rejects_model_flag(capsys):
    assert cli_main(["ablate", "--ladder", "resunet", "--model", "unet"]) == 2
    assert "per rung" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_phantom(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantom")
    return get_dataset("phantom", root, n_train=3, n_test=1, shape=(4, 48, 48))


def test_tiny_ladder_interrupted_and_resumed(tiny_phantom, tmp_path):
    calls: list[tuple[str, bool]] = []
    real_train = trainer.train
    interrupt = {"resunet_v1_0"}

    def spy(cfg, dataset=None, resume=None, stop_after_epochs=None, overwrite=False):
        calls.append((cfg.model, resume is not None))
        if cfg.model in interrupt:  # simulate a run killed after its first epoch
            interrupt.discard(cfg.model)
            stop_after_epochs = 1
        return real_train(cfg, dataset=dataset, resume=resume, stop_after_epochs=stop_after_epochs,
                          overwrite=overwrite)

    out = tmp_path / "ladder"
    kw = {"output": out, "flag_values": TINY, "encoder_weights": "none", "verbose": False,
          "train": spy}
    with pytest.raises(UnetzooError, match="not tested"):
        ablation.run_ladder("resunet", tiny_phantom, rungs=["v0_1", "v1_0"], **kw)
    assert calls == [("resunet_v0_1", False), ("resunet_v1_0", False)]
    first = (out / "resunet_v0_1" / "result.json").read_text()
    assert not (out / "resunet_v1_0" / "result.json").exists()
    latest = out / "resunet_v1_0" / "checkpoints" / "latest.pt"
    first_segment = read_checkpoint(latest).train_state.history[-1]["time_s"]

    calls.clear()
    rows = ablation.run_ladder("resunet", tiny_phantom, rungs=["v0_1", "v1_0"], **kw)
    # v0.1 is kept as it was; v1.0 continues from its checkpoint instead of restarting.
    assert calls == [("resunet_v1_0", True)]
    assert (out / "resunet_v0_1" / "result.json").read_text() == first
    assert [r["rung"] for r in rows] == ["resunet_v0_1", "resunet_v1_0"]
    v10 = rows[1]
    assert v10["epochs"] == 2
    hist = read_checkpoint(out / "resunet_v1_0" / "checkpoints" / "latest.pt").train_state.history
    assert [h["epoch"] for h in hist] == [1, 2]
    # Training time = the interrupted segment (epoch 1) + the resumed one (epoch 2).
    assert v10["train_seconds"] == pytest.approx(first_segment + hist[-1]["time_s"], abs=0.06)
    from unetzoo.models import parameter_count

    assert v10["params"] == parameter_count(
        "resunet_v1_0", in_channels=1, num_classes=9, encoder="resnet18", width_scale=0.125
    )
    assert rows[0]["macs"] > 0 and v10["macs"] > 0
    assert v10["encoder_weights"] is None and rows[0]["encoder_weights"] is None
    assert len(v10["per_class_dice"]) == 8
    assert 0.0 <= v10["mean_dice"] <= 1.0

    md = (out / "ablation.md").read_text()
    assert "resunet_v0_1" in md and "resunet_v1_0" in md and "DSC (%)" in md
    with (out / "ablation.csv").open() as fh:
        table = list(csv.DictReader(fh))
    assert [r["rung"] for r in table] == ["resunet_v0_1", "resunet_v1_0"]
    assert float(table[1]["mean_dice"]) == pytest.approx(v10["mean_dice"])
    assert "dice_liver" in table[0]

    # A finished rung under another recipe is an error, not a silently mixed table.
    calls.clear()
    with pytest.raises(ConfigError, match="another recipe"):
        ablation.run_ladder(
            "resunet", tiny_phantom, rungs=["v0_1"], **{**kw, "flag_values": {**TINY, "seed": 7}}
        )
    assert calls == []


def test_write_tables_from_rows(tmp_path):
    row = {
        "rung": "resunet_v1_0", "params": 21_441_545, "macs": 3_000_000_000, "img_size": 224,
        "train_seconds": 12.0, "epochs": 3, "best_epoch": 2, "mean_dice": 0.5,
        "mean_hd95": 4.25, "hd95_unit": "mm", "encoder_weights": None, "dataset": "phantom",
        "per_class_dice": {"liver": 0.75},
    }
    md, csv_path = ablation.write_tables([row], tmp_path)
    text = md.read_text()
    assert "| resunet_v1_0 | 21.44 | 3.00 | 12 | 3 | 50.00 | 4.25 | 75.00 |" in text
    assert json.loads(json.dumps(list(csv.DictReader(csv_path.open()))))[0]["dice_liver"] == "0.75"

