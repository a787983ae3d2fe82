"""The one per-case evaluation (``unetzoo.metrics.score_case``) and its projections."""

from __future__ import annotations

import numpy as np
import pytest

from unetzoo.errors import DataError
from unetzoo.metrics import evaluate_case, hd95, score_case
from unetzoo.metrics import per_case as cm
from unetzoo.metrics.overlap import confusion as binary_confusion

METRICS = ("dice", "iou", "sensitivity", "specificity", "hd95", "hd", "assd", "nsd")


def _maps(seed=0, shape=(4, 10, 9), k=4):
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, k, size=shape)
    pred = np.where(rng.random(shape) < 0.7, gt, rng.integers(0, k, size=shape))
    return pred, gt


def test_projections_agree_with_the_one_scoring():
    pred, gt = _maps()
    sp = (2.0, 0.8, 0.7)
    scores = score_case(pred, gt, 4, sp, metrics=METRICS, nsd_tolerance=1.5)
    values = evaluate_case(pred, gt, 4, sp, metrics=METRICS, nsd_tolerance=1.5)
    record = cm.case_metrics(pred, gt, 4, sp, nsd_tolerance=1.5)
    counts = cm.class_counts(pred, gt, 4)
    for c in (1, 2, 3):
        assert scores[c].confusion == binary_confusion(pred == c, gt == c) == counts[c]
        assert scores[c].values == values[c]
        row = record["classes"][str(c)]
        assert {m: row[m] for m in METRICS} == values[c]
        assert (row["tp"], row["fp"], row["fn"], row["tn"]) == tuple(counts[c])


def test_ignore_label_is_left_out_like_an_roi():
    pred, gt = _maps(1)
    gt = gt.copy()
    gt[:, :2] = 9  # nnU-Net's ignore label, above the classes
    keep = gt != 9
    got = score_case(pred, gt, 4, metrics=("dice", "hd95"), ignore_label=9)
    want = score_case(pred, np.where(keep, gt, 0), 4, metrics=("dice", "hd95"), roi=keep)
    assert got == want
    assert got[2].confusion == binary_confusion(pred[keep] == 2, gt[keep] == 2)
    with pytest.raises(DataError, match="holds class 9"):
        score_case(pred, gt, 4)  # without the ignore label 9 is no class
    with pytest.raises(DataError, match="predicted label map holds class 9"):
        score_case(np.where(keep, pred, 9), gt, 4, ignore_label=9)  # only gt may hold it


def test_one_slice_volume_json_is_scored_as_the_report_scores_it():
    """cases.json and the report agree on a 2-D case stored as (1, H, W): both score
    the in-plane contour (the JSON used to score the slab as a 3-D surface)."""
    gt = np.zeros((1, 16, 16), np.int64)
    pred = np.zeros_like(gt)
    gt[0, 2:14, 2:14] = 1
    pred[0, 5:11, 5:11] = 1  # a slab's "surface" would be every voxel: HD95 3.61, not 4.15
    row = cm.case_metrics(pred, gt, 2, (3.0, 1.0, 1.0), metrics=("hd95",))["classes"]["1"]
    assert row["hd95"] == evaluate_case(pred, gt, 2, (3.0, 1.0, 1.0))[1]["hd95"]
    assert row["hd95"] == pytest.approx(hd95(pred[0] == 1, gt[0] == 1)) == pytest.approx(4.147, abs=1e-3)


def test_projections_take_score_case_arguments_and_need_a_metric():
    """evaluate_case forwards score_case's arguments (positional and keyword) unchanged;
    counts only (no metric) is score_case's, evaluate_case refuses it in one line."""
    from unetzoo.errors import ConfigError
    from unetzoo.metrics import assd, hd

    pred, gt = _maps(3)
    sp, roi = (2.0, 0.8, 0.7), gt != 3
    full = score_case(pred, gt, 4, sp, "transunet", ("dice", "hd95"), roi, workers=1)
    assert evaluate_case(pred, gt, 4, sp, "transunet", ("dice", "hd95"), roi, workers=1) == \
        {c: s.values for c, s in full.items()}
    assert all(not s.values for s in score_case(pred, gt, 4, metrics=()).values())
    with pytest.raises(ConfigError, match="unknown metric"):
        evaluate_case(pred, gt, 4, metrics=())
    with pytest.raises(TypeError):
        evaluate_case(pred, gt, 4, no_such_option=1)
    # hd95 / hd / assd: one body, each its own name and its own SurfaceDistances value
    a, b = pred == 1, gt == 1
    values = evaluate_case(pred, gt, 4, sp, metrics=("hd95", "hd", "assd"))[1]
    for fn in (hd95, hd, assd):
        assert fn(a, b, sp) == pytest.approx(values[fn.__name__])
    assert [f.__name__ for f in (hd95, hd, assd)] == ["hd95", "hd", "assd"]
