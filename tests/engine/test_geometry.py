"""One path for geometry (issue 14): every label map the project writes has the input
file's shape, voxel order and affine, whichever command wrote it.

A tiny anisotropic nnU-Net dataset whose through-plane axis is the file's j axis (not
k), with an oblique, flipped affine: `test --save-nifti`, `predict` and the demo's
download must give the same voxels, on the input grid (nnU-Net's evaluator requires
the reference's shape).
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from unetzoo.cli.main import main

SHAPE = (19, 5, 23)  # file (i, j, k); j has the largest spacing: the slicing axis
ZOOMS = (0.8, 3.0, 0.9)


def _affine() -> np.ndarray:
    """Rotated 20 degrees about z, x flipped, anisotropic zooms, shifted origin."""
    t = np.deg2rad(20.0)
    rot = np.array([[np.cos(t), -np.sin(t), 0.0], [np.sin(t), np.cos(t), 0.0], [0, 0, 1.0]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag([-1.0, 1.0, 1.0]) @ np.diag(ZOOMS)
    aff[:3, 3] = [12.0, -7.5, 30.0]
    return aff


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from ckpt_helpers import save_model_checkpoint
    from unetzoo import create_model
    from unetzoo.data.imageio import save_image
    from unetzoo.data.preprocessing import mri_spec

    base = tmp_path_factory.mktemp("geometry")
    root = base / "Dataset900_Geometry"
    for d in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (root / d).mkdir(parents=True)
    rng = np.random.default_rng(0)
    aff = _affine()
    ii, jj, kk = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    for i, (folder, lab_folder) in enumerate([("imagesTr", "labelsTr")] * 2
                                             + [("imagesTs", "labelsTs")]):
        blob = ((ii - 9 - i) ** 2 / 36 + (kk - 11) ** 2 / 49 + (jj - 2) ** 2 / 4) < 1
        img = (rng.normal(0, 1, SHAPE) + 4.0 * blob + 0.1 * ii - 0.05 * kk).astype(np.float32)
        save_image(img, aff, root / folder / f"g_{i:03d}_0000.nii.gz")
        save_image(blob.astype(np.uint8), aff, root / lab_folder / f"g_{i:03d}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MRI"}, "labels": {"background": 0, "blob": 1},
        "numTraining": 2, "file_ending": ".nii.gz"}))
    torch.manual_seed(0)
    model = create_model("unet", in_channels=1, num_classes=2, base_channels=4)
    ckpt = base / "best.pt"
    save_model_checkpoint(ckpt, model, class_names=["background", "blob"], img_size=16,
                          preprocessing=mri_spec(), dataset="nnunet")
    return {"base": base, "root": root, "ckpt": ckpt, "affine": aff,
            "image": root / "imagesTs" / "g_002_0000.nii.gz",
            "label": root / "labelsTs" / "g_002.nii.gz"}


@pytest.fixture(scope="module")
def written(setup):
    """The label map of the test case from `test --save-nifti`, `predict` and the demo."""
    from unetzoo.deploy.webapp import DemoBackend

    mp = pytest.MonkeyPatch()
    mp.setenv("UNETZOO_CACHE", str(setup["base"] / "cache"))
    try:
        rep = setup["base"] / "report"
        assert main(["test", "--checkpoint", str(setup["ckpt"]), "--dataset", "nnunet",
                     "--data-root", str(setup["root"]), "--save-nifti", "--overlays", "0",
                     "--output", str(rep), "--backend", "torch"]) == 0
        pred = setup["base"] / "pred"
        assert main(["predict", str(setup["image"]), "--checkpoint", str(setup["ckpt"]),
                     "--output", str(pred), "--overlays", "0", "--backend", "torch"]) == 0
        demo = DemoBackend([setup["ckpt"]])
        seg = demo.segment(setup["image"], demo.choices()[0], setup["label"])
    finally:
        mp.undo()
    return {"test": rep / "predictions" / "g_002.nii.gz",
            "predict": pred / "g_002.nii.gz",  # nnU-Net naming: CASE_0000 in, CASE out
            "demo": seg.download, "seg": seg}


@pytest.mark.parametrize("who", ["test", "predict", "demo"])
def test_label_map_has_the_input_grid(setup, written, who):
    ref = nib.load(str(setup["label"]))
    out = nib.load(str(written[who]))
    assert out.shape == ref.shape == SHAPE  # nnU-Net's evaluator: same shape as the reference
    np.testing.assert_allclose(out.affine, setup["affine"], atol=1e-5)
    np.testing.assert_allclose(out.header.get_zooms()[:3], ZOOMS, atol=1e-5)
    assert int(out.header["sform_code"]) > 0 and int(out.header["qform_code"]) > 0
    # nnU-Net's evaluator reads both files with SimpleITK (SimpleITKIO) and compares the
    # arrays voxel-wise: size, spacing, origin and direction must agree.
    sitk = pytest.importorskip("SimpleITK")
    a, b = sitk.ReadImage(str(written[who])), sitk.ReadImage(str(setup["label"]))
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-5)
    _ = sitk.GetArrayFromImage(a)[None] == sitk.GetArrayFromImage(b)[None]  # broadcasts


def test_test_predict_and_demo_write_the_same_voxels(written):
    maps = {k: np.asarray(nib.load(str(written[k])).dataobj) for k in ("test", "predict", "demo")}
    assert len(np.unique(maps["predict"])) == 2  # a non-trivial map, so equality means something
    np.testing.assert_array_equal(maps["test"], maps["predict"])
    np.testing.assert_array_equal(maps["demo"], maps["predict"])


def test_demo_slices_and_scores_like_predict(setup, written):
    """The demo cuts the volume along predict's axis (j, the largest spacing), and its
    ground truth lines up with the image."""
    from unetzoo.data.geometry import volume_to_cdhw
    from unetzoo.data.imageio import read_file
    from unetzoo.deploy import uploads

    seg = written["seg"]
    arr, aff, zooms = read_file(setup["image"])
    vol, axes, spacing = volume_to_cdhw(arr, aff, zooms)
    up = uploads.read_upload(setup["image"])
    assert up.order == axes and axes[0] == 1  # slices along j, as predict
    assert up.array.shape == vol.shape == (1, 5, 23, 19)
    np.testing.assert_allclose(up.spacing, spacing)
    assert seg.labels.shape == (5, 23, 19) and seg.gt.shape == seg.labels.shape
    ref = np.asarray(nib.load(str(setup["label"])).dataobj)
    np.testing.assert_array_equal(seg.gt, np.transpose(ref, axes))


def test_anisotropic_volume_cut_along_the_same_axis(tmp_path):
    """predict's reader and the demo's decoder share one slicing rule."""
    from unetzoo.data.imageio import decode, save_image
    from unetzoo.deploy import uploads
    from unetzoo.engine.inputs import model_input

    rng = np.random.default_rng(1)
    arr = rng.normal(0, 1, (6, 7, 8)).astype(np.float32)
    for zooms, axis in (((3.0, 1.0, 1.0), 0), ((1.0, 2.5, 1.0), 1), ((1.0, 1.0, 4.0), 2),
                        ((1.0, 1.0, 1.0), 2)):
        path = tmp_path / f"v{axis}{zooms[0]}.nii.gz"
        save_image(arr, np.diag([*zooms, 1.0]), path)
        inp = decode(path)
        up = uploads.read_upload(path)
        assert inp.order == up.order and inp.order[0] == axis
        np.testing.assert_allclose(model_input(inp, 1, {"kind": "none"}), up.array)


def test_rgb_to_grey_is_one_constant():
    import unetzoo.deploy.uploads as uploads
    import unetzoo.engine.inputs as predict  # predict's model inputs
    from unetzoo.data.imageio import Decoded
    from unetzoo.engine.inputs import RGB_TO_GREY

    # The demo has no colour rule of its own: it goes through predict's.
    assert not hasattr(uploads, "RGB_TO_GREY")
    rgb = np.zeros((3, 1, 2, 2), np.float32)
    rgb[1] = 100.0
    up = Decoded(rgb, where="x")
    grey = uploads.to_model_input(up, 1, {"kind": "none"})
    pix = np.zeros((3, 1, 2, 2), np.uint8)
    pix[1] = 100
    via_predict = predict.match_channels(Decoded(pix), 1)
    assert grey[0, 0, 0, 0] == pytest.approx(100 * RGB_TO_GREY[1])
    assert via_predict.dtype == np.uint8 and via_predict[0, 0, 0, 0] == round(100 * RGB_TO_GREY[1])


@pytest.mark.parametrize("ending", [".nii.gz", ".nrrd", ".mha"])
def test_one_writer_puts_any_format_back_on_the_file_grid(tmp_path, ending):
    """save_case_labels un-permutes a (D, H, W) map read by volume_to_cdhw, whatever the
    format its path names (NRRD/MetaImage through imageio.save_labels)."""
    pytest.importorskip("SimpleITK")
    from unetzoo.data import imageio
    from unetzoo.data.geometry import volume_to_cdhw
    from unetzoo.data.imageio import save_case_labels
    from unetzoo.engine.logging.display import file_to_array_affine

    rng = np.random.default_rng(2)
    file_labels = rng.integers(0, 4, SHAPE).astype(np.uint8)
    aff = _affine()
    vol, axes, _ = volume_to_cdhw(file_labels, aff, ZOOMS)
    assert axes[0] == 1
    out = save_case_labels(vol[0], file_to_array_affine(aff, axes), tmp_path / f"p{ending}", axes)
    back, back_aff, _ = imageio.read_file(out)
    np.testing.assert_array_equal(back, file_labels)
    # ITK stores orthonormal directions: this affine (rotation, flip, zooms) has them.
    np.testing.assert_allclose(back_aff, aff, atol=1e-4)
