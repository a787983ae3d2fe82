"""Thin commands: ``unetzoo predict`` and ``unetzoo train`` parse their flags and call one
API function, which checks each name once and decides the run as the Python API does."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from unetzoo.cli.main import main
from unetzoo.errors import ConfigError

SIZE = 32
PHANTOM = ["--dataset-option", "n_train=3", "--dataset-option", "n_test=1",
           "--dataset-option", "shape=[4,32,32]", "--dataset-option", "seed=0"]


@pytest.fixture()
def checkpoint_and_volume(tmp_path):
    import nibabel as nib

    from ckpt_helpers import save_model_checkpoint
    from unetzoo.models import create_model

    torch.manual_seed(0)
    model = create_model("unet", in_channels=1, num_classes=3, base_channels=4).eval()
    ckpt = save_model_checkpoint(tmp_path / "c.pt", model, class_names=["background", "a", "b"],
                                 img_size=SIZE, preprocessing={"kind": "none"},
                                 dataset="phantom")
    vol = np.random.default_rng(0).random((24, 20, 3), dtype=np.float32)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "case.nii.gz")
    return ckpt, tmp_path / "case.nii.gz"


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_predict_cli_writes_what_the_api_writes_and_checks_the_backend_once(
    checkpoint_and_volume, tmp_path, monkeypatch, backend
):
    import nibabel as nib

    from unetzoo.engine import backends
    from unetzoo.engine.predict import predict_files

    ckpt, volume = checkpoint_and_volume
    calls = []
    real = backends.check_backend
    monkeypatch.setattr(backends, "check_backend", lambda name: calls.append(name) or real(name))
    assert main(["predict", str(volume), "--checkpoint", str(ckpt), "--output",
                 str(tmp_path / "cli"), "--device", "cpu", "--backend", backend,
                 "--overlays", "0"]) == 0
    assert calls == [backend]
    predict_files([volume], ckpt, tmp_path / "api", device="cpu", backend=backend, overlays=0,
                  verbose=False)
    cli = np.asarray(nib.load(tmp_path / "cli" / "case.nii.gz").dataobj)
    api = np.asarray(nib.load(tmp_path / "api" / "case.nii.gz").dataobj)
    np.testing.assert_array_equal(cli, api)


def test_predict_api_refuses_bad_options_before_any_file_is_read(tmp_path):
    from unetzoo.engine.predict import predict_files

    missing = tmp_path / "nothing.nii.gz"  # never read: the options fail first
    with pytest.raises(ConfigError, match="unknown backend 'fast'"):
        predict_files([missing], tmp_path / "x.pt", tmp_path / "o", backend="fast")
    with pytest.raises(ConfigError, match="--max-voxels must be >= 1"):
        predict_files([missing], tmp_path / "x.pt", tmp_path / "o", max_voxels=0)
    with pytest.raises(ConfigError, match="--max-pixels applies to --checkpoint"):
        predict_files([missing], tmp_path / "m.onnx", tmp_path / "o", max_pixels=100)
    assert not (tmp_path / "o").exists()


def test_resolve_run_decides_the_run_as_the_cli(tmp_path):
    from unetzoo.data.phantom import generate_phantom
    from unetzoo.engine.launch import resolve_run, train_from_flags

    root = tmp_path / "ph"
    generate_phantom(root, n_train=3, n_test=1, shape=[4, 32, 32], seed=0)
    flags = {"dataset": "phantom", "data_root": str(root), "model": "unet",
             "dataset_options": {"n_train": 3, "n_test": 1, "shape": [4, 32, 32], "seed": 0},
             "model_options": {"base_channels": 4}, "img_size": 32, "batch_size": 4,
             "max_epochs": 1, "output": str(tmp_path / "run"), "test": False,
             "progress": False, "device": "cpu"}
    run = resolve_run(flags)
    assert run.resume is None and run.config.max_epochs == 1 and run.dataset.name == "phantom"
    assert not (tmp_path / "run").exists()  # deciding writes nothing
    train_from_flags(flags)
    # bare resume: <output>/checkpoints/latest.pt, its configuration under the flags'
    resumed = resolve_run({"output": str(tmp_path / "run"), "max_epochs": 2}, resume="latest")
    assert resumed.resume == tmp_path / "run" / "checkpoints" / "latest.pt"
    assert dataclasses.replace(resumed.config, max_epochs=1) == run.config
    with pytest.raises(ConfigError, match="bare --resume needs --output"):
        resolve_run({}, resume="latest")
    with pytest.raises(ConfigError, match="pass one of them"):
        train_from_flags(flags, resume="latest", overwrite=True)


def test_train_cli_bad_flag_is_one_line_before_any_work(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--lr-schedule", "cosine", *PHANTOM, "--output", str(out)]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: unknown lr-schedule 'cosine'; choose one of poly, constant")
    assert not out.exists()
