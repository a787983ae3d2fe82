"""The one per-case evaluation, ``unetzoo.metrics.score_case(pred, case, rules)``: the
case's own geometry (``Reference``), the evaluation's protocol (``ScoringRules``) and
what the ``CaseScore`` projects."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from unetzoo.errors import ConfigError, DataError
from unetzoo.metrics import (
    Reference,
    ScoringRules,
    assd,
    dice,
    hd,
    hd95,
    score_case,
    spacing_known,
)
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
    score = score_case(pred, Reference(gt, sp, class_names=("bg", "a", "b", "c")),
                       ScoringRules(4, metrics=METRICS, nsd_tolerance=1.5))
    values, record = score.by_class(), score.record()
    assert record["spacing"] == list(sp) and record["distance_units"] == "mm"
    assert record["nsd_tolerance"] == 1.5 and record["protocol"] == "strict"
    for c in (1, 2, 3):
        conf = score.classes[c].confusion
        assert conf == binary_confusion(pred == c, gt == c)
        assert score.classes[c].values == values[c]
        row = record["classes"][str(c)]
        assert row["name"] == "abc"[c - 1] and list(row)[7:] == list(METRICS)
        assert {m: row[m] for m in METRICS} == values[c]
        assert (row["tp"], row["fp"], row["fn"], row["tn"]) == tuple(conf)
        assert values[c]["dice"] == pytest.approx(dice(pred == c, gt == c))
        for fn in (hd95, hd, assd):  # one body, each its own value
            assert values[c][fn.__name__] == pytest.approx(fn(pred == c, gt == c, sp))


def test_counts_only_and_bad_rules_are_one_line():
    pred, gt = _maps(3)
    score = score_case(pred, Reference(gt), ScoringRules(4, metrics=()))
    assert all(not s.values for s in score.classes.values())
    assert score.classes[2].confusion == binary_confusion(pred == 2, gt == 2)
    for bad in ({"metrics": ("dice", "volume")}, {"protocol": "lenient"},
                {"distance_unit": "cm"}, {"metrics": ("nsd",), "nsd_tolerance": -1.0}):
        with pytest.raises(ConfigError):
            ScoringRules(4, **bad)
    for k in (1, 2.5, True):
        with pytest.raises(ConfigError, match="num_classes"):
            ScoringRules(k)
    with pytest.raises(ConfigError, match="Reference and a metrics.ScoringRules"):
        score_case(pred, gt, ScoringRules(4))  # a bare array is not a case


def test_ignore_label_is_left_out_like_an_roi():
    pred, gt = _maps(1)
    gt = gt.copy()
    gt[:, :2] = 9  # nnU-Net's ignore label, above the classes
    keep = gt != 9
    rules = ScoringRules(4)
    got = score_case(pred, Reference(gt, ignore_label=9), rules)
    want = score_case(pred, Reference(np.where(keep, gt, 0), roi=keep), rules)
    assert got == want
    assert got.classes[2].confusion == binary_confusion(pred[keep] == 2, gt[keep] == 2)
    np.testing.assert_array_equal(Reference(gt, ignore_label=9).scored_region(), keep)
    with pytest.raises(DataError, match="holds class 9"):
        score_case(pred, Reference(gt), rules)  # without the ignore label 9 is no class
    with pytest.raises(DataError, match="predicted label map holds class 9"):
        score_case(np.where(keep, pred, 9), Reference(gt, ignore_label=9), rules)


def test_roi_leaves_outside_voxels_out():
    pred, gt = _maps(2, shape=(10, 12))
    roi = np.zeros(gt.shape, bool)
    roi[2:8, 3:9] = True
    score = score_case(pred, Reference(gt, roi=roi), ScoringRules(4))
    inside_p, inside_g = np.where(roi, pred, 0), np.where(roi, gt, 0)
    for c, s in score.classes.items():
        assert s.confusion == binary_confusion(pred[roi] == c, gt[roi] == c)
        assert s.values["hd95"] == pytest.approx(hd95(inside_p == c, inside_g == c))
    with pytest.raises(DataError, match="roi shape"):
        score_case(pred, Reference(gt, roi=roi[:5]), ScoringRules(4))


def test_distances_in_mm_only_with_a_known_spacing_never_mixed():
    """HD95 in mm with the case's spacing; in voxels when it is unknown (None) or under
    TransUNet's protocol (as its test script); the score says which."""
    gt = np.zeros((3, 12, 12), np.int64)
    gt[:, 2:8, 2:8] = 1
    pred = np.roll(gt, 2, axis=2)
    sp = (3.0, 2.0, 2.0)
    mm = score_case(pred, Reference(gt, sp), ScoringRules(2))
    vox = score_case(pred, Reference(gt, None), ScoringRules(2))
    tu = score_case(pred, Reference(gt, sp), ScoringRules(2, "transunet"))
    forced = score_case(pred, Reference(gt, sp), ScoringRules(2, "transunet", distance_unit="mm"))
    assert (mm.distance_unit, vox.distance_unit, tu.distance_unit) == ("mm", "voxels", "voxels")
    assert mm.by_class()[1]["hd95"] == pytest.approx(hd95(pred == 1, gt == 1, sp)) == 4.0
    assert vox.by_class()[1]["hd95"] == tu.by_class()[1]["hd95"] == 2.0
    assert forced.distance_unit == "mm" and forced.by_class()[1]["hd95"] == 4.0
    assert vox.record()["spacing"] is None and vox.record()["distance_units"] == "voxels"


def test_a_class_absent_from_both_maps_is_nan_never_one():
    z = np.zeros((6, 6), np.int64)
    g = z.copy()
    g[1:3, 1:3] = 1
    strict = score_case(g, Reference(g), ScoringRules(3, metrics=METRICS)).by_class()
    undefined = {m: v for m, v in strict[2].items() if m != "specificity"}  # TN / (TN + FP)
    assert len(undefined) == 7 and all(map(math.isnan, undefined.values()))  # class 2 nowhere
    assert strict[1]["dice"] == 1.0
    tu = score_case(z, Reference(z), ScoringRules(3, "transunet")).by_class()
    assert tu[1] == {"dice": 0.0, "hd95": 0.0}  # TransUNet's finite rule, on request


def test_one_slice_volume_is_scored_as_the_image():
    """A 2-D case stored as (1, H, W): the in-plane contour, not a slab's surface; the
    record keeps the case's three spacing entries."""
    gt = np.zeros((1, 16, 16), np.int64)
    pred = np.zeros_like(gt)
    gt[0, 2:14, 2:14] = 1
    pred[0, 5:11, 5:11] = 1  # a slab's "surface" would be every voxel: HD95 3.61, not 4.15
    score = score_case(pred, Reference(gt, (3.0, 1.0, 1.0)), ScoringRules(2, metrics=("hd95",)))
    assert score.record()["spacing"] == [3.0, 1.0, 1.0]
    assert score.by_class()[1]["hd95"] == pytest.approx(hd95(pred[0] == 1, gt[0] == 1))
    assert score.by_class()[1]["hd95"] == pytest.approx(4.147, abs=1e-3)


def test_reference_of_a_dataset_case_applies_its_rules():
    lab = np.zeros((2, 4, 4), np.int64)
    roi = np.ones_like(lab, bool)

    def case(**kw):
        base = {"id": "c", "label": lab, "spacing": (2.0, 1.0, 1.0), "affine": None, "roi": roi,
                "ignore_label": 7, "class_names": ["bg", "x"]}
        return SimpleNamespace(**{**base, **kw})

    ref = Reference.of_case(case(affine=np.eye(4)))
    assert ref.spacing == (2.0, 1.0, 1.0) and ref.roi is roi and ref.ignore_label == 7
    assert ref.class_names == ("bg", "x")
    assert Reference.of_case(case(), ["bg", "y"]).class_names == ("bg", "y")
    assert Reference.of_case(case()).spacing is None  # no affine: the 1.0 placeholder
    assert Reference.of_case(case(spacing_known=True)).spacing == (2.0, 1.0, 1.0)
    nan = case(affine=np.eye(4), spacing=(float("nan"), 1.0, 1.0))  # pixdim 0
    assert not spacing_known(nan) and Reference.of_case(nan).spacing is None
    with pytest.raises(DataError, match="no label"):
        Reference.of_case(case(label=None))
