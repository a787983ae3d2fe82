"""Dice, IoU, sensitivity, specificity and AUC against direct computations and medpy."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from unetzoo.errors import ConfigError, DataError
from unetzoo.metrics import auc, confusion, dice, iou, sensitivity, specificity

mb = pytest.importorskip("medpy.metric.binary")


@pytest.mark.parametrize("shape", [(17, 23), (6, 11, 9)])
def test_overlap_metrics_match_direct_counts_and_medpy(shape):
    rng = np.random.default_rng(len(shape))
    for _ in range(5):
        pred = rng.random(shape) < rng.uniform(0.1, 0.7)
        gt = rng.integers(0, 3, shape) * (rng.random(shape) < 0.5)  # int labels, nonzero = fg
        g = gt != 0
        tp = np.sum(pred & g)
        fp = np.sum(pred & ~g)
        fn = np.sum(~pred & g)
        tn = np.sum(~pred & ~g)
        assert confusion(pred, gt) == (tp, fp, fn, tn)
        assert dice(pred, gt) == pytest.approx(2 * tp / (2 * tp + fp + fn))
        assert dice(pred, gt) == pytest.approx(mb.dc(pred, gt))
        assert iou(pred, gt) == pytest.approx(tp / (tp + fp + fn))
        assert iou(pred, gt) == pytest.approx(mb.jc(pred, gt))
        assert sensitivity(pred, gt) == pytest.approx(tp / (tp + fn))
        assert sensitivity(pred, gt) == pytest.approx(mb.sensitivity(pred, gt))
        assert specificity(pred, gt) == pytest.approx(tn / (tn + fp))
        assert specificity(pred, gt) == pytest.approx(mb.specificity(pred, gt))


def test_empty_masks_strict_protocol():
    """nnU-Net / MONAI: undefined is NaN (not scored), one-sided emptiness scores 0."""
    e = np.zeros((5, 6), bool)
    f = e.copy()
    f[1:3, 2:4] = True
    assert math.isnan(dice(e, e)) and math.isnan(iou(e, e))
    assert dice(f, e) == 0.0 and dice(e, f) == 0.0  # hallucinated / missed structure
    assert iou(f, e) == 0.0 and iou(e, f) == 0.0
    assert math.isnan(sensitivity(e, e)) and math.isnan(sensitivity(f, e))
    assert sensitivity(e, f) == 0.0
    full = np.ones_like(e)
    assert math.isnan(specificity(full, full)) and math.isnan(specificity(f, full))
    assert specificity(e, e) == 1.0 and specificity(f, e) == pytest.approx(26 / 30)


def test_empty_masks_transunet_protocol():
    """TransUNet: pred>0 & gt>0 -> value; pred>0 & gt==0 -> 1; else 0."""
    e = np.zeros((5, 6), bool)
    f = e.copy()
    f[1:3, 2:4] = True
    g = np.roll(f, 1, axis=1)
    for fn in (dice, iou):
        assert fn(f, e, protocol="transunet") == 1.0
        assert fn(e, f, protocol="transunet") == 0.0
        assert fn(e, e, protocol="transunet") == 0.0
        assert fn(f, g, protocol="transunet") == fn(f, g)
    assert dice(f, g) == pytest.approx(0.5)
    # the protocol never yields NaN: the other ratios keep finite conventions
    full = np.ones_like(e)
    assert sensitivity(e, e, protocol="transunet") == 1.0
    assert sensitivity(f, e, protocol="transunet") == 0.0
    assert specificity(full, full, protocol="transunet") == 1.0
    assert specificity(f, full, protocol="transunet") == 0.0
    assert auc(np.arange(30.0).reshape(5, 6), e, protocol="transunet") == 0.5


def _auc_pairs(scores: np.ndarray, labels: np.ndarray) -> float:
    """The definition: P(score_pos > score_neg) + 0.5 P(tie), over all pairs."""
    pos = scores[labels]
    neg = scores[~labels]
    wins = sum((p > n) + 0.5 * (p == n) for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auc_matches_pairwise_definition_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(5):
        labels = rng.random((7, 9)) < 0.4
        scores = np.round(rng.random((7, 9)) + 0.3 * labels, 1)  # coarse: many ties
        assert auc(scores, labels) == pytest.approx(_auc_pairs(scores.ravel(), labels.ravel()))


def test_auc_extremes_and_undefined_cases():
    labels = np.array([0, 0, 1, 1, 1], bool)
    assert auc(np.array([0.1, 0.2, 0.3, 0.8, 0.9]), labels) == 1.0
    assert auc(np.array([0.9, 0.8, 0.3, 0.2, 0.1]), labels) == 0.0
    assert auc(np.full(5, 0.5), labels) == 0.5
    assert math.isnan(auc(np.random.default_rng(1).random(5), np.zeros(5, bool)))
    assert math.isnan(auc(np.random.default_rng(1).random(5), np.ones(5, bool)))
    with pytest.raises(DataError, match="NaN"):
        auc(np.array([0.1, np.nan, 0.3, 0.8, 0.9]), labels)
    with pytest.raises(DataError, match="shape"):
        auc(np.zeros(4), labels)


def test_bad_protocol_and_shapes():
    a = np.zeros((3, 3), bool)
    with pytest.raises(ConfigError, match="protocol"):
        dice(a, a, protocol="monai")
    with pytest.raises(DataError, match="shape"):
        iou(a, np.zeros((3, 4), bool))
