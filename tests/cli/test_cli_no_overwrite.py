"""`unetzoo predict --output` / `unetzoo test --output` never overwrite a user's file:
refused in one line (exit 2) unless --overwrite; a re-run into unetzoo's own folder works."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from unetzoo.cli.main import main

USER_BYTES = b"my ground truth, not a prediction"
TINY = {"n_train": 1, "n_test": 1, "shape": [4, 16, 16], "seed": 0}


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    """A tiny phantom and an untrained narrow U-Net checkpoint for it."""
    import torch

    from ckpt_helpers import save_model_checkpoint
    from unetzoo import create_model
    from unetzoo.data import get_dataset
    from unetzoo.data.phantom import generate_phantom

    base = tmp_path_factory.mktemp("noover")
    root = generate_phantom(base / "ct", n_train=1, n_test=1, shape=TINY["shape"], seed=0)
    ds = get_dataset("phantom", root, **TINY)
    torch.manual_seed(0)
    m = create_model("unet", in_channels=ds.in_channels, num_classes=ds.num_classes,
                     base_channels=4)
    ckpt = save_model_checkpoint(
        base / "model" / "checkpoints" / "best.pt", m, class_names=ds.class_names,
        in_channels=ds.in_channels, img_size=16, dataset="phantom",
        config={"dataset": "phantom", "data_root": str(root), "dataset_options": TINY})
    image = sorted((root / "imagesTs").glob("*_0000.nii.gz"))[0]
    return {"ckpt": Path(ckpt), "image": image, "case": image.name[: -len("_0000.nii.gz")]}


def _run(argv: list[str], capsys) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err.strip()


def _refused(argv: list[str], capsys) -> str:
    code, err = _run(argv, capsys)
    assert code == 2, err
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    assert "was not written by unetzoo" in err and "--overwrite" in err
    return err


def test_predict_refuses_then_overwrites_then_reruns(setup, tmp_path, capsys):
    out = tmp_path / "labelsTr"
    out.mkdir()
    target = out / f"{setup['case']}.nii.gz"
    target.write_bytes(USER_BYTES)
    (out / "dataset_notes.txt").write_text("unrelated")
    argv = ["predict", str(setup["image"]), "--checkpoint", str(setup["ckpt"]), "--output",
            str(out), "--device", "cpu", "--backend", "torch", "--overlays", "1"]
    assert target.name in _refused(argv, capsys)
    assert target.read_bytes() == USER_BYTES
    code, err = _run([*argv, "--overwrite"], capsys)
    assert code == 0, err
    assert target.read_bytes() != USER_BYTES
    code, err = _run(argv, capsys)  # unetzoo's own file now: re-run without the flag
    assert code == 0, err
    assert (out / "dataset_notes.txt").read_text() == "unrelated"
    manifest = json.loads((out / ".unetzoo-outputs.json").read_text())
    assert target.name in manifest["files"] and "dataset_notes.txt" not in manifest["files"]


def test_test_refuses_a_user_summary(setup, tmp_path, capsys):
    out = tmp_path / "report"
    out.mkdir()
    (out / "summary.md").write_bytes(USER_BYTES)
    argv = ["test", "--checkpoint", str(setup["ckpt"]), "--output", str(out), "--device",
            "cpu", "--backend", "torch", "--overlays", "0"]
    assert "summary.md" in _refused(argv, capsys)
    assert (out / "summary.md").read_bytes() == USER_BYTES
    assert not (out / "summary.json").exists()
    for extra in (["--overwrite"], []):  # replaced with the flag; a re-run needs none
        code, err = _run([*argv, *extra], capsys)
        assert code == 0, err
    assert (out / "summary.md").read_bytes() != USER_BYTES
    assert np.isfinite(json.loads((out / "summary.json").read_text())["cases"])
