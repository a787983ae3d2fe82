"""``get_dataset(None, root)`` picks the reader from the folder: a ``dataset.json`` means
nnU-Net, so ``unetzoo train --data-root DatasetNNN_X`` needs no ``--dataset``."""

from __future__ import annotations

import json
import shutil

import pytest

from unetzoo.data import get_dataset, guess_dataset
from unetzoo.data.phantom import STAMP


@pytest.fixture()
def nnunet_root(tiny_phantom_root, tmp_path):
    """The phantom's files without its stamp: a plain nnU-Net v2 raw folder."""
    root = tmp_path / "Dataset001_Tiny"
    shutil.copytree(tiny_phantom_root, root)
    (root / STAMP).unlink()
    assert (root / "dataset.json").is_file()
    return root


def test_dataset_json_picks_nnunet(nnunet_root, tiny_phantom_root, tmp_path):
    assert guess_dataset(nnunet_root) == "nnunet"
    ds = get_dataset(None, nnunet_root)
    assert ds.name == "nnunet" and ds.recipe == "default"
    assert ds.cases("test")
    # the phantom's own folder and an empty folder stay the phantom; no root too
    assert guess_dataset(tiny_phantom_root) == "phantom"
    assert guess_dataset(tmp_path / "new") == "phantom" and guess_dataset(None) == "phantom"
    # an explicit name always wins
    assert get_dataset("nnunet", tiny_phantom_root).name == "nnunet"


def test_cli_train_with_only_data_root(nnunet_root, tmp_path, monkeypatch):
    from unetzoo.cli.main import main

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    rc = main(["train", "--data-root", str(nnunet_root), "--model", "unet",
               "--model-option", "base_channels=4", "--img-size", "32", "--batch-size", "4",
               "--max-epochs", "1", "--output", str(out), "--device", "cpu",
               "--no-progress"])
    assert rc == 0
    summary = json.loads((out / "report" / "summary.json").read_text())
    assert summary["dataset"] == "nnunet" and summary["hd95_unit"] == "mm"
