"""HD95 / HD / ASSD against medpy (test-only dependency) on random and organ-like masks."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from unetzoo.errors import ConfigError, DataError
from unetzoo.metrics import assd, hd, hd95, surface_distances

mb = pytest.importorskip("medpy.metric.binary")

TOL = 1e-6


def _blob(rng: np.random.Generator, shape: tuple[int, ...], frac: float) -> np.ndarray:
    """A smooth, organ-like mask: thresholded smoothed noise holding ~frac of the voxels."""
    field = gaussian_filter(rng.standard_normal(shape), sigma=max(shape) / 8)
    return field > np.quantile(field, 1.0 - frac)


def _check_all(pred, gt, spacing, method="auto", connectivity=1):
    sd = surface_distances(pred, gt, spacing, method=method, connectivity=connectivity)
    ref = (
        mb.hd95(pred, gt, voxelspacing=spacing, connectivity=connectivity),
        mb.hd(pred, gt, voxelspacing=spacing, connectivity=connectivity),
        mb.assd(pred, gt, voxelspacing=spacing, connectivity=connectivity),
    )
    got = (sd.hd95(), sd.hd(), sd.assd())
    np.testing.assert_allclose(got, ref, rtol=0, atol=TOL)


@pytest.mark.parametrize("method", ["kdtree", "edt", "auto"])
@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("anisotropic", [False, True])
def test_random_masks_equal_medpy(method, ndim, anisotropic):
    rng = np.random.default_rng(10 * ndim + anisotropic)
    shape = (41, 37) if ndim == 2 else (13, 21, 17)
    for _ in range(4):
        pred = rng.random(shape) < rng.uniform(0.02, 0.5)
        gt = rng.random(shape) < rng.uniform(0.02, 0.5)
        spacing = tuple(rng.uniform(0.4, 3.0, ndim)) if anisotropic else None
        _check_all(pred, gt, spacing, method)


@pytest.mark.parametrize("ndim", [2, 3])
def test_organ_like_masks_equal_medpy(ndim):
    rng = np.random.default_rng(7 + ndim)
    shape = (96, 80) if ndim == 2 else (24, 48, 40)
    for spacing in (None, (3.0, 0.76, 0.76)[-ndim:], 1.5):
        gt = _blob(rng, shape, 0.15)
        # realistic errors: a shifted, partly wrong copy plus a small distant blob
        pred = np.roll(gt, 2, axis=-1)
        pred[(slice(None),) * (ndim - 1) + (slice(0, 4),)] = True
        _check_all(pred, gt, spacing)


def test_masks_touching_the_border_equal_medpy():
    """medpy erodes with border_value=0: foreground on the image edge is surface."""
    rng = np.random.default_rng(3)
    gt = np.zeros((20, 30, 30), bool)
    gt[:, :12, :] = True  # fills whole faces of the image
    pred = np.zeros_like(gt)
    pred[5:, 3:15, 10:] = True
    pred |= rng.random(gt.shape) < 0.01
    for spacing in (None, (2.5, 0.7, 0.9)):
        for method in ("kdtree", "edt"):
            _check_all(pred, gt, spacing, method)
    full = np.ones((8, 9), bool)
    _check_all(full, full, None)  # all foreground: the surface is the image frame
    part = full.copy()
    part[3:5, 3:5] = False
    _check_all(part, full, (1.0, 2.0))


def test_connectivity_two_equals_medpy():
    rng = np.random.default_rng(5)
    pred = _blob(rng, (16, 20, 18), 0.2)
    gt = _blob(rng, (16, 20, 18), 0.2)
    _check_all(pred, gt, (2.0, 1.0, 1.0), connectivity=2)


def test_small_object_far_away_uses_only_the_bounding_box():
    """A tiny pair of objects in a big image: cropping must not change the values."""
    pred = np.zeros((30, 100, 90), np.uint8)
    gt = np.zeros_like(pred)
    gt[15:19, 50:58, 60:66] = 1
    pred[16:20, 52:58, 61:68] = 3  # any nonzero value is foreground
    ref = mb.hd95(pred != 0, gt != 0, voxelspacing=(3.0, 0.8, 0.8))
    assert hd95(pred, gt, (3.0, 0.8, 0.8)) == pytest.approx(ref, abs=TOL)
    pred[2, 95, 5] = 7  # a distant false positive widens the box
    ref = mb.hd95(pred != 0, gt != 0, voxelspacing=(3.0, 0.8, 0.8))
    assert hd95(pred, gt, (3.0, 0.8, 0.8)) == pytest.approx(ref, abs=TOL)


def test_hd95_hd_assd_functions_match_surface_object():
    rng = np.random.default_rng(11)
    pred = _blob(rng, (30, 30), 0.3)
    gt = _blob(rng, (30, 30), 0.3)
    sd = surface_distances(pred, gt, (0.5, 2.0))
    assert hd95(pred, gt, (0.5, 2.0)) == sd.hd95()
    assert hd(pred, gt, (0.5, 2.0)) == sd.hd()
    assert assd(pred, gt, (0.5, 2.0)) == sd.assd()
    assert sd.hd() >= sd.hd95() >= 0.0


@pytest.mark.parametrize("fn", [hd95, hd, assd])
def test_empty_masks_both_protocols(fn):
    shape = (10, 20, 30)
    spacing = (2.0, 1.0, 0.5)
    empty = np.zeros(shape, bool)
    full = np.zeros(shape, bool)
    full[3:6, 4:9, 5:12] = True
    # strict (MONAI): both empty -> NaN (not scored), exactly one empty -> inf
    assert math.isnan(fn(empty, empty, spacing))
    assert fn(full, empty, spacing) == math.inf
    assert fn(empty, full, spacing) == math.inf
    # transunet: 0 unless both are present
    for a, b in ((empty, empty), (full, empty), (empty, full)):
        assert fn(a, b, spacing, protocol="transunet") == 0.0
    assert fn(full, full, spacing, protocol="transunet") == 0.0  # identical masks
    shifted = np.roll(full, 1, axis=2)
    assert fn(shifted, full, spacing, protocol="transunet") == pytest.approx(
        fn(shifted, full, spacing), abs=1e-12
    ) and fn(shifted, full, spacing) > 0


def test_bad_input_one_line_errors():
    a = np.zeros((4, 4), bool)
    with pytest.raises(DataError, match="shape"):
        hd95(a, np.zeros((4, 5), bool))
    with pytest.raises(ConfigError, match="protocol"):
        hd95(a, a, protocol="nnunet")
    with pytest.raises(DataError, match="spacing"):
        hd95(a, a, spacing=(1.0, 2.0, 3.0))
    with pytest.raises(ConfigError, match="method"):
        surface_distances(a, a, method="brute")
