"""Radiological display: orientation from the affine, markers, error map, one palette."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from unetzoo.data.imageio import save_image
from unetzoo.engine.logging import display
from unetzoo.engine.logging.display import slice_orientation

SHAPE = (12, 10, 4)  # file (i, j, k)


def _blob_volume(affine: np.ndarray) -> np.ndarray:
    """A volume with a blob at world x < 0 (patient's left), y > 0 (anterior)."""
    vol = np.zeros(SHAPE, np.float32)
    inv = np.linalg.inv(affine)
    for i in range(SHAPE[0]):
        for j in range(SHAPE[1]):
            x, y, _, _ = affine @ np.array([i, j, 0, 1.0])
            if x < -2.5 and y > 1.5:
                vol[i, j, :] = 100.0
    assert vol.any() and inv is not None
    return vol


def _affine(flip_x: bool, flip_y: bool) -> np.ndarray:
    """Centred affine; RAS (i -> R, j -> A) or flipped like LPS files."""
    sx, sy = (-1.0 if flip_x else 1.0), (-1.0 if flip_y else 1.0)
    aff = np.diag([sx, sy, 2.0, 1.0])
    aff[:3, 3] = [-sx * (SHAPE[0] - 1) / 2, -sy * (SHAPE[1] - 1) / 2, 0.0]
    return aff


def _nnunet(root: Path, affine: np.ndarray) -> Path:
    for d in ("imagesTr", "labelsTr"):
        (root / d).mkdir(parents=True)
    vol = _blob_volume(affine)
    for c in ("a", "b"):
        save_image(vol, affine, root / "imagesTr" / f"{c}_0000.nii.gz")
        save_image((vol > 0).astype(np.uint8), affine, root / "labelsTr" / f"{c}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MRI"}, "labels": {"background": 0, "blob": 1},
        "numTraining": 2, "file_ending": ".nii.gz",
    }))
    return root


def test_axial_ras_slices_are_turned_to_radiological():
    # (d, h, w) -> (S, A, R): rows point anterior, columns to the right as stored
    aff = np.zeros((4, 4))
    aff[2, 0] = aff[1, 1] = aff[0, 2] = aff[3, 3] = 1.0
    o = slice_orientation(aff)
    assert o.plane == "axial" and not o.transpose and o.flip_rows and o.flip_cols
    assert o.markers == {"top": "A", "bottom": "P", "left": "R", "right": "L"}


def test_coronal_and_sagittal_planes_and_no_affine():
    cor = np.zeros((4, 4))
    cor[1, 0] = cor[0, 1] = cor[2, 2] = cor[3, 3] = 1.0  # (d, h, w) -> (A, R, S)
    o = slice_orientation(cor)
    assert o.plane == "coronal" and o.transpose  # rows must run S -> I
    assert o.markers == {"top": "S", "bottom": "I", "left": "R", "right": "L"}
    sag = np.zeros((4, 4))
    sag[0, 0] = sag[2, 1] = sag[1, 2] = sag[3, 3] = 1.0  # (d, h, w) -> (R, S, A)
    o = slice_orientation(sag)
    assert o.plane == "sagittal" and o.flip_rows and o.flip_cols
    assert o.markers == {"top": "S", "bottom": "I", "left": "A", "right": "P"}
    none = slice_orientation(None)
    assert none.markers == {} and np.array_equal(none.apply(np.arange(6).reshape(2, 3)),
                                                 np.arange(6).reshape(2, 3))


@pytest.mark.parametrize("flip_x,flip_y", [(False, False), (True, True), (True, False)])
def test_patient_left_ends_on_the_image_right_and_anterior_up(tmp_path, flip_x, flip_y):
    from unetzoo.data import get_dataset

    ds = get_dataset("nnunet", _nnunet(tmp_path / "ds", _affine(flip_x, flip_y)))
    case = ds.load_case("a", "train")
    z = case.image.shape[1] // 2
    panels = dict(display.slice_panels(case.image[0, z], case.label[z], case.label[z],
                                       orientation=slice_orientation(case.affine)))
    shown = panels["prediction"]
    fg = np.argwhere(np.any(shown != panels["image"], axis=-1))
    h, w = shown.shape[:2]
    assert fg.size
    assert (fg[:, 1] >= w / 2).all(), "the patient's left must be on the image's right"
    assert (fg[:, 0] < h / 2).all(), "anterior must be up"
    assert slice_orientation(case.affine).markers["right"] == "L"


def test_demo_upload_is_shown_the_same_way(tmp_path):
    from unetzoo.deploy import uploads, webapp

    aff = _affine(True, True)
    path = tmp_path / "vol.nii.gz"
    save_image(_blob_volume(aff), aff, path)
    up = uploads.read_upload(path)
    o = slice_orientation(display.file_to_array_affine(up.affine))
    shown = o.apply(up.array[0, 1])
    fg = np.argwhere(shown > 0)
    assert (fg[:, 1] >= shown.shape[1] / 2).all() and (fg[:, 0] < shown.shape[0] / 2).all()

    labels = (up.array[0] > 0).astype(np.int64)
    gt = np.zeros_like(labels)
    seg = webapp.Segmentation(
        display=display.to_grey(up.array[0]), labels=labels, class_names=["bg", "blob"],
        spacing=up.spacing, is_volume=True, download=path, gt=gt,
        affine=display.file_to_array_affine(up.affine),
    )
    view = webapp.render_view(seg, 1)
    one = webapp.render_overlay(seg.display[1], labels[1], orientation=o)
    assert view.shape[1] == 3 * one.shape[1] + 2 * 4  # ground truth | prediction | errors
    # every predicted pixel is a false positive against an empty reference: red
    err = webapp.render_overlay(seg.display[1], labels[1], errors_against=gt[1])
    red = np.argwhere(labels[1] > 0)[0]
    assert err[tuple(red)][0] > err[tuple(red)][2]


def test_error_map_colours_fp_fn_and_wrong_class():
    grey = np.zeros((1, 4), np.uint8)
    gt = np.array([[1, 0, 1, 2]])
    pred = np.array([[1, 1, 0, 1]])
    rgb = display.error_map(grey, pred, gt, alpha=1.0)
    c = display.ERROR_COLORS
    assert [tuple(p) for p in rgb[0]] == [c["tp"], c["fp"], c["fn"], c["wrong"]]
    ign = display.error_map(grey, pred, np.array([[3, 3, 3, 3]]), alpha=1.0, ignore_label=3)
    assert not ign.any()  # ignored pixels are never errors


def test_one_palette_and_window_for_every_picture():
    from unetzoo.deploy import webapp
    from unetzoo.engine.logging import plots

    assert webapp.PALETTE is display.PALETTE
    for k in (1, 5, 17):
        assert tuple(np.round(plots.class_colors(20)[k] * 255).astype(int)) == webapp.class_color(k)
    vol = np.linspace(0, 1000, 1000).reshape(10, 10, 10)
    assert np.array_equal(webapp.to_display(vol), display.to_grey(vol))


def test_markers_are_drawn_and_overlay_png_takes_the_affine(tmp_path):
    from unetzoo.engine.logging.plots import overlay_png

    aff = np.zeros((4, 4))
    aff[2, 0] = aff[1, 1] = aff[0, 2] = aff[3, 3] = 1.0
    o = slice_orientation(aff)
    rgb = np.full((64, 64, 3), 128, np.uint8)
    marked = display.draw_markers(rgb, o)
    for y, x in ((2, 32), (61, 32), (32, 2), (32, 61)):  # a dark box at each edge
        assert marked[y - 2:y + 3, x - 2:x + 3].min() < 128
    assert np.array_equal(display.draw_markers(rgb, slice_orientation(None)), rgb)
    img = np.random.default_rng(0).normal(size=(8, 9))
    lab = np.zeros((8, 9), np.int64)
    lab[1:3, 1:3] = 1
    out = overlay_png(tmp_path / "o.png", img, lab, ["bg", "x"], gt=lab, affine=aff)
    assert out.stat().st_size > 0


def test_pick_slices_does_not_count_ignored_pixels():
    from unetzoo.engine.logging.plots import pick_slices

    labels = np.zeros((3, 4, 4), np.int64)
    labels[0] = 3  # unannotated everywhere
    labels[2, 1, 1] = 1
    assert pick_slices(labels, 1) == [0]
    assert pick_slices(labels, 1, ignore_label=3) == [2]
