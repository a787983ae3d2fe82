"""Normalized surface Dice (unetzoo.metrics.nsd): hand-computed cases, empty-mask rules,
a brute-force reference and MONAI's compute_surface_dice."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.ndimage import binary_erosion
from scipy.spatial.distance import cdist

from unetzoo.errors import ConfigError
from unetzoo.metrics.nsd import nsd


def _squares() -> tuple[np.ndarray, np.ndarray]:
    """A 4x4 square and the same square one column to the right, in a 10x10 image."""
    gt = np.zeros((10, 10), bool)
    gt[2:6, 2:6] = True
    pred = np.zeros_like(gt)
    pred[2:6, 3:7] = True
    return pred, gt


def test_hand_computed_shifted_square():
    # Each 12-pixel boundary: 6 pixels on the other boundary (distance 0), 6 one pixel
    # away (the two side edges).
    pred, gt = _squares()
    assert nsd(pred, gt, tolerance=0.0) == pytest.approx(12 / 24)
    assert nsd(pred, gt, tolerance=0.99) == pytest.approx(0.5)
    assert nsd(pred, gt, tolerance=1.0) == 1.0
    # Columns 2 mm wide: per boundary 6 at 0 mm, 2 at 1 mm (via a row), 4 at 2 mm.
    assert nsd(pred, gt, tolerance=0.5, spacing=(1.0, 2.0)) == pytest.approx(0.5)
    assert nsd(pred, gt, tolerance=1.5, spacing=(1.0, 2.0)) == pytest.approx(16 / 24)
    assert nsd(pred, gt, tolerance=2.0, spacing=(1.0, 2.0)) == 1.0
    assert nsd(gt, gt, tolerance=0.0) == 1.0


def test_empty_masks_follow_monai():
    pred, gt = _squares()
    empty = np.zeros_like(gt)
    assert math.isnan(nsd(empty, empty))
    assert nsd(pred, empty) == 0.0
    assert nsd(empty, gt, tolerance=100.0) == 0.0


@pytest.mark.parametrize("bad", [-1.0, math.inf, math.nan, "a", None])
def test_bad_tolerance_is_a_config_error(bad):
    pred, gt = _squares()
    with pytest.raises(ConfigError, match="tolerance"):
        nsd(pred, gt, tolerance=bad)


def _blobs(shape, seed):
    rng = np.random.default_rng(seed)
    from scipy.ndimage import gaussian_filter

    a = gaussian_filter(rng.random(shape), 1.5) > 0.5
    b = gaussian_filter(rng.random(shape), 1.5) > 0.5
    return a, b


def test_equals_brute_force_pairwise_distances():
    pred, gt = _blobs((14, 15), 1)
    sp = np.array([0.7, 1.3])

    def surface(m):
        return np.argwhere(m & ~binary_erosion(m)) * sp  # border_value=0: edges count

    sp_, sg_ = surface(pred), surface(gt)
    d = cdist(sp_, sg_)
    d_pg, d_gp = d.min(1), d.min(0)
    for tau in (0.0, 0.75, 1.05, 2.5):  # no exact ties: see the next test
        ref = (np.sum(d_pg <= tau) + np.sum(d_gp <= tau)) / (d_pg.size + d_gp.size)
        assert nsd(pred, gt, tau, spacing=sp) == pytest.approx(ref, abs=1e-12)


def test_a_distance_equal_to_the_tolerance_counts_despite_rounding():
    # Columns 0.7 mm wide: every boundary pixel is 0 or 0.7 mm (= tau) from the other
    # boundary; 0.7 * k arithmetic lands a few of them 1 ulp above 0.7.
    pred, gt = _squares()
    assert nsd(pred, gt, tolerance=0.7, spacing=(1.0, 0.7)) == 1.0
    assert nsd(pred, gt, tolerance=0.69, spacing=(1.0, 0.7)) == pytest.approx(0.5)


def test_equals_monai_compute_surface_dice():
    torch = pytest.importorskip("torch")
    monai_metrics = pytest.importorskip("monai.metrics")
    spacing = (2.0, 0.8, 1.1)
    for seed in range(3):
        pred, gt = _blobs((9, 16, 13), seed)
        pred[0] = gt[0] = True  # foreground on the image border
        y_pred = torch.from_numpy(np.stack([~pred, pred])[None].astype(np.float32))
        y = torch.from_numpy(np.stack([~gt, gt])[None].astype(np.float32))
        for tau in (0.5, 1.0, 2.0):
            ref = monai_metrics.compute_surface_dice(
                y_pred, y, class_thresholds=[tau], spacing=spacing
            )[0, 0].item()
            assert nsd(pred, gt, tau, spacing=spacing) == pytest.approx(ref, abs=1e-6)
