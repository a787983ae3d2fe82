"""Fixtures for the deploy tests: a tiny checkpoint and phantom files in real formats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from small_configs import best_slice

IMG_SIZE = 64


@pytest.fixture(scope="session")
def phantom_case() -> tuple[np.ndarray, np.ndarray]:
    """A small phantom CT case: HU ``int16 (D, H, W)`` and labels ``uint8 (D, H, W)``."""
    from unetzoo.data.phantom import make_ct_case

    return make_ct_case(np.random.default_rng(3), shape=(6, 96, 96))


@pytest.fixture(scope="session")
def phantom_norm(phantom_case) -> np.ndarray:
    """The case normalised with the Synapse CT window: ``(D, H, W)`` float32 in [0, 1]."""
    from unetzoo.data.preprocessing import ct_spec, normalize

    return normalize(phantom_case[0], ct_spec())


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A randomly initialised narrow U-Net saved through the checkpoint contract."""
    from unetzoo import create_model
    from unetzoo.data.listed import SYNAPSE_CLASSES
    from unetzoo.data.preprocessing import ct_spec
    from unetzoo.engine.checkpoint import Checkpoint, TrainState, write_checkpoint
    from unetzoo.engine.spec import InferenceSpec

    torch.manual_seed(0)
    model = create_model("unet", in_channels=1, num_classes=len(SYNAPSE_CLASSES), base_channels=4)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    spec = InferenceSpec.for_model(model, class_names=SYNAPSE_CLASSES, in_channels=1,
                                   img_size=IMG_SIZE, preprocessing=ct_spec(), dataset="phantom")
    state = TrainState(optimizer={}, epoch=0, iteration=0)
    write_checkpoint(Checkpoint(spec=spec, weights=model.state_dict(), train_state=state), path)
    return path


@pytest.fixture(scope="session")
def phantom_files(tmp_path_factory, phantom_case, phantom_norm) -> dict[str, Path]:
    """The phantom case as PNG (+ ground-truth PNG), TIFF, NIfTI (+ ground truth)."""
    import nibabel as nib
    import tifffile
    from PIL import Image

    hu, lab = phantom_case
    z = best_slice(lab)
    root = tmp_path_factory.mktemp("phantom_files")
    files = {
        "png": root / "phantom_slice.png",
        "gt_png": root / "phantom_slice_gt.png",
        "tif": root / "phantom_slice.tif",
        "nii": root / "phantom_case.nii.gz",
        "gt_nii": root / "phantom_case_gt.nii.gz",
    }
    Image.fromarray((phantom_norm[z] * 255).round().astype(np.uint8)).save(files["png"])
    Image.fromarray(lab[z].astype(np.uint8)).save(files["gt_png"])
    tifffile.imwrite(files["tif"], (phantom_norm[z] * 255).round().astype(np.uint8))
    affine = np.diag([2.5, 2.5, 5.0, 1.0])
    # nibabel axes (X, Y, Z) = our (W, H, D).
    nib.save(nib.Nifti1Image(np.transpose(hu, (2, 1, 0)).astype(np.int16), affine), files["nii"])
    nib.save(nib.Nifti1Image(np.transpose(lab, (2, 1, 0)).astype(np.uint8), affine),
             files["gt_nii"])
    return files


@pytest.fixture(scope="session")
def dynamic_onnx(tiny_checkpoint, tmp_path_factory) -> Path:
    """``tiny_checkpoint`` exported by ``unetzoo export --dynamic`` (ONNX)."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from unetzoo.cli.main import main

    out = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    assert main(["export", "--checkpoint", str(tiny_checkpoint), "--format", "onnx",
                 "--dynamic", "--output", str(out)]) == 0
    return out
