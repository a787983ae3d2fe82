"""The demo backend without a browser: segmentation, legend, metrics, downloads, errors."""

from __future__ import annotations

import numpy as np
import pytest

from unetzoo.deploy.webapp import (
    DEMO_CHOICE,
    DemoBackend,
    class_color,
    legend_html,
    render_overlay,
)
from unetzoo.errors import CheckpointError, DataError, UnetzooError


@pytest.fixture(scope="module")
def backend(tiny_checkpoint):
    return DemoBackend([tiny_checkpoint])


def test_png_with_ground_truth(backend, phantom_files, phantom_case):
    choice = backend.choices()[0]
    assert backend.choices()[-1] == DEMO_CHOICE
    seg = backend.segment(phantom_files["png"], choice, phantom_files["gt_png"], pixel_spacing=2.5)
    h, w = phantom_case[0].shape[1:]
    assert seg.labels.shape == (1, h, w) and not seg.is_volume
    assert seg.labels.max() < len(seg.class_names)
    # Metrics are unetzoo.metrics on the same masks.
    from unetzoo.metrics import dice

    gt = seg.gt[0]
    for k in range(1, len(seg.class_names)):
        assert seg.metrics[k]["dice"] == pytest.approx(dice(seg.labels[0] == k, gt == k))
    html = legend_html(seg, 0)
    for name in seg.class_names[1:]:
        assert f'data-class="{name}"' in html
    assert "Dice" in html and "HD95 (mm)" in html and "area (mm²)" in html
    # The download is the label map itself, named after the upload, inside a private folder.
    from PIL import Image

    assert seg.download.name == "phantom_slice_labels.png"
    assert seg.download.resolve().is_relative_to(backend.download_root.resolve())
    np.testing.assert_array_equal(np.asarray(Image.open(seg.download)), seg.labels[0])


def test_nifti_volume_keeps_geometry(backend, phantom_files, phantom_case):
    import nibabel as nib

    seg = backend.segment(phantom_files["nii"], backend.choices()[0], phantom_files["gt_nii"])
    d, h, w = phantom_case[0].shape
    assert seg.is_volume and seg.labels.shape == (d, h, w)
    assert seg.spacing == pytest.approx((5.0, 2.5, 2.5))
    src, out = nib.load(phantom_files["nii"]), nib.load(seg.download)
    assert out.shape == src.shape
    np.testing.assert_allclose(out.affine, src.affine)
    np.testing.assert_array_equal(np.transpose(np.asarray(out.dataobj), (2, 1, 0)), seg.labels)
    html = legend_html(seg, 2)
    assert "volume (mL)" in html and "area in slice 2" in html
    # Volume of a class = voxels x voxel volume.
    k = int(np.bincount(seg.labels.ravel(), minlength=2)[1:].argmax()) + 1
    n = int((seg.labels == k).sum())
    assert f"{n * 5.0 * 2.5 * 2.5 / 1000:.2f}" in html


def test_overlay_colours_only_labelled_pixels():
    grey = np.full((4, 5), 100, np.uint8)
    labels = np.zeros((4, 5), np.int64)
    labels[1, 2] = 3
    rgb = render_overlay(grey, labels, alpha=0.5)
    assert rgb.shape == (4, 5, 3)
    assert tuple(rgb[0, 0]) == (100, 100, 100)
    expect = tuple(round(0.5 * 100 + 0.5 * c) for c in class_color(3))
    assert tuple(rgb[1, 2]) == expect
    big = render_overlay(grey, labels, alpha=0.5, min_size=12)
    assert big.shape == (12, 15, 3)  # factor 3 = ceil(12 / 5)
    assert tuple(big[3, 6]) == tuple(big[5, 8]) == expect


def _header_less(arr: np.ndarray, path, pixdim) -> None:
    """A NIfTI whose header gives ``pixdim`` (a 0 is an unknown size) and neither qform
    nor sform (the bytes patched: nibabel would not write it)."""
    import struct

    import nibabel as nib

    img = nib.Nifti1Image(arr, np.eye(4))
    img.header.set_data_offset(352)
    raw = bytearray(img.header.binaryblock.ljust(352, b"\0"))
    raw += np.asarray(arr, dtype=img.get_data_dtype()).tobytes(order="F")
    raw[80:92] = struct.pack("<3f", *pixdim)  # pixdim[1:4]
    raw[252:256] = struct.pack("<2h", 0, 0)  # qform_code, sform_code
    path.write_bytes(bytes(raw))


def test_unknown_spacing_scores_in_voxels_as_the_test_does(backend, phantom_case, tmp_path):
    """A volume whose header lacks a voxel size (pixdim 0 on one axis) is scored in
    voxels, as `unetzoo test` scores such a case, never with the 1.0 placeholder mixed
    with the known 2 mm sizes as millimetres."""
    import nibabel as nib

    from unetzoo.metrics import hd95

    choice = backend.choices()[0]
    image = tmp_path / "no_size.nii"
    _header_less(np.transpose(phantom_case[0], (2, 1, 0)).astype(np.int16), image, (2, 2, 0))
    first = backend.segment(image, choice)
    # the reference: the demo's own prediction, in the file's order, moved one voxel
    # along a 2 mm axis
    moved = np.zeros_like(np.asarray(nib.load(first.download).dataobj))
    moved[1:] = np.asarray(nib.load(first.download).dataobj)[:-1]
    gt = tmp_path / "gt.nii"
    _header_less(moved.astype(np.uint8), gt, (2, 2, 0))
    seg = backend.segment(image, choice, gt)
    scored = [k for k in seg.metrics if (seg.labels == k).any()]
    assert scored, "the tiny model predicts some foreground on the phantom"
    assert seg.spacing in ((1.0, 2.0, 2.0), (2.0, 1.0, 2.0), (2.0, 2.0, 1.0))  # placeholder
    for k in scored:
        voxels = hd95(seg.labels == k, seg.gt == k)
        assert seg.metrics[k]["hd95"] == pytest.approx(voxels)
        # the old rule: the 1.0 placeholder beside 2 mm sizes, read as millimetres
        assert voxels != pytest.approx(hd95(seg.labels == k, seg.gt == k, seg.spacing))
    assert seg.distance_unit == "voxels" and "HD95 (voxels)" in legend_html(seg, 0)


def test_roi_is_scored_as_the_test_scores_the_case(backend, phantom_files, tmp_path):
    """With a region-of-interest mask (DRIVE's field of view) the demo's Dice and HD95
    are those `unetzoo test` gives the same case: a dataset Case with that ROI, scored
    under its own rules (no spacing on file: voxels)."""
    from PIL import Image

    from unetzoo.data.base import Case
    from unetzoo.metrics import Reference, ScoringRules, score_case

    choice = backend.choices()[0]
    whole = backend.segment(phantom_files["png"], choice, phantom_files["gt_png"])
    h, w = whole.labels.shape[1:]
    fov = np.zeros((h, w), np.uint8)
    fov[h // 4 : 3 * h // 4, w // 5 : 4 * w // 5] = 255
    Image.fromarray(fov).save(tmp_path / "fov.png")
    seg = backend.segment(phantom_files["png"], choice, phantom_files["gt_png"],
                          roi_path=tmp_path / "fov.png")
    case = Case(id="c", image=np.zeros((1, 1, h, w), np.float32), label=seg.gt,
                roi=(fov > 0)[None], class_names=list(seg.class_names))
    test = score_case(seg.labels, Reference.of_case(case),
                      ScoringRules(len(seg.class_names))).by_class()
    assert seg.metrics.keys() == test.keys() and seg.distance_unit == "voxels"
    for k, values in test.items():
        for m, v in values.items():
            assert seg.metrics[k][m] == pytest.approx(v, nan_ok=True), (k, m)
    assert seg.metrics != whole.metrics  # the ROI changed the score
    with pytest.raises(DataError, match="ground-truth"):
        backend.segment(phantom_files["png"], choice, roi_path=tmp_path / "fov.png")


def test_typed_pixel_spacing_scores_in_mm():
    """2-D images carry no spacing: HD95 in pixels, unless a pixel spacing is typed in,
    even 1 mm (the legend used to say "px" whenever the spacing was 1)."""
    from unetzoo.deploy.webapp import Segmentation

    lab = np.zeros((1, 4, 4), np.int64)
    seg = Segmentation(display=np.zeros(lab.shape, np.uint8), labels=lab, class_names=["bg", "a"],
                       spacing=(1.0, 1.0, 1.0), is_volume=False, download=None, gt=lab,
                       metrics={1: {"dice": 1.0, "hd95": 0.0}})
    assert "HD95 (mm)" in legend_html(seg, 0)
    seg.distance_unit = "voxels"
    assert "HD95 (px)" in legend_html(seg, 0)


def test_bad_inputs_one_clear_line(backend, tmp_path, phantom_files, phantom_case):
    choice = backend.choices()[0]
    fake = tmp_path / "notes.png"
    fake.write_text("this is not an image")
    with pytest.raises(DataError, match="not a supported file"):
        backend.segment(fake, choice)
    with pytest.raises(DataError, match="unknown model"):
        backend.segment(phantom_files["png"], "../../etc/passwd")
    # A two-channel volume for a one-channel model.
    import nibabel as nib

    two = tmp_path / "two_channels.nii.gz"
    vol = np.zeros((16, 16, 3, 2), np.int16)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), two)
    with pytest.raises(DataError, match="2 channel.*takes 1"):
        backend.segment(two, choice)
    # A ground truth of another size.
    from PIL import Image

    small = tmp_path / "gt_small.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(small)
    with pytest.raises(DataError, match="shape"):
        backend.segment(phantom_files["png"], choice, small)
    for exc in (DataError, CheckpointError):
        assert issubclass(exc, UnetzooError)


def test_checkpoint_without_metadata(tmp_path):
    import torch

    from unetzoo import create_model

    bare = tmp_path / "weights_only.pt"
    torch.save(create_model("unet", base_channels=2).state_dict(), bare)
    # Refused when the demo starts, not at the first request.
    with pytest.raises(CheckpointError, match="not a unetzoo checkpoint"):
        DemoBackend([bare])


def test_demo_choice_without_model_says_how_to_get_one(tmp_path, monkeypatch):
    monkeypatch.setenv("UNETZOO_CACHE", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    b = DemoBackend([])
    assert b.choices() == [DEMO_CHOICE]
    with pytest.raises(DataError, match="make demo"):
        b.load(DEMO_CHOICE)


def test_missing_checkpoint_path():
    with pytest.raises(DataError, match="does not exist"):
        DemoBackend(["/nonexistent/best.pt"])


def test_demo_model_reused_when_present(tmp_path):
    from unetzoo.deploy.demo_model import train_demo_model

    ck = tmp_path / "checkpoints" / "final.pt"
    ck.parent.mkdir(parents=True)
    ck.write_bytes(b"stub")
    assert list(train_demo_model(tmp_path)) == [f"checkpoint: {ck}"]


def test_demo_cli_rejects_bad_flags(capsys):
    from unetzoo.cli.main import main

    assert main(["demo", "--port", "0"]) == 2
    assert "--port" in capsys.readouterr().err
    assert main(["demo", "--max-upload-mb", "-1"]) == 2
    assert "--max-upload-mb" in capsys.readouterr().err


def test_demo_loads_through_the_one_loader(tiny_checkpoint, dynamic_onnx, phantom_files,
                                           tmp_path):
    """The demo's models are the Predictors of engine.predict.load_predictor (.pt and .onnx),
    and its labels are predict's labels for the same NIfTI file."""
    import nibabel as nib

    from unetzoo.engine.predict import Predictor, load_predictor

    b = DemoBackend([tiny_checkpoint, dynamic_onnx])
    pt_label, onnx_label = b.choices()[:2]
    for label, path in ((pt_label, tiny_checkpoint), (onnx_label, dynamic_onnx)):
        loaded = b.load(label)
        assert isinstance(loaded, Predictor) and loaded.spec == load_predictor(path).spec
    seg = b.segment(phantom_files["nii"], onnx_label)
    ref = load_predictor(tiny_checkpoint).predict_files(
        [phantom_files["nii"]], tmp_path / "predict", overlays=0,
        verbose=False)[0]
    np.testing.assert_array_equal(np.asarray(nib.load(seg.download).dataobj),
                                  np.asarray(nib.load(ref["output"]).dataobj))


def test_legend_mean_is_the_metrics_scored_mean(tmp_path, monkeypatch):
    """The legend's mean Dice is unetzoo.metrics.scored_mean (no rule of its own): NaN
    classes are left out, and none scored reads n/a, never 1.0."""
    import math

    import unetzoo.metrics as metrics
    from unetzoo.deploy.webapp import Segmentation

    seen: list[list[float]] = []
    real = metrics.scored_mean
    monkeypatch.setattr(metrics, "scored_mean", lambda v: seen.append(list(v)) or real(v))
    lab = np.zeros((1, 4, 4), np.int64)
    seg = Segmentation(display=np.zeros(lab.shape, np.uint8), labels=lab,
                       class_names=["bg", "a", "b"], spacing=(1.0, 1.0, 1.0), is_volume=False,
                       download=tmp_path / "x.png", gt=lab,
                       metrics={1: {"dice": math.nan, "hd95": math.nan},
                                2: {"dice": math.nan, "hd95": math.nan}})
    assert "mean Dice over the 0 scored class(es): n/a" in legend_html(seg, 0)
    seg.metrics[2] = {"dice": 0.25, "hd95": 3.0}
    assert "mean Dice over the 1 scored class(es): 0.250" in legend_html(seg, 0)
    assert len(seen) == 2 and math.isnan(seen[1][0]) and seen[1][1] == 0.25
