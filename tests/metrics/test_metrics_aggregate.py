"""score_case / summarize / tables and CSV against the per-mask functions."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from unetzoo.errors import ConfigError, DataError
from unetzoo.metrics import (
    METRICS,
    Reference,
    ScoringRules,
    auc,
    dice,
    format_table,
    hd95,
    never_predicted_warning,
    present_classes,
    score_case,
    summarize,
    surface_distances,
    write_case_csv,
    write_summary_csv,
)
from unetzoo.metrics.overlap import sensitivity, specificity

NAMES = ["background", "liver", "kidney", "spleen", "tumour"]


def _values(pred, gt, k, spacing=None, protocol="strict", metrics=("dice", "hd95"), roi=None,
            prob=None):
    """``{class: {metric: value}}`` of the one scorer, distances with the given spacing
    under either protocol."""
    rules = ScoringRules(k, protocol, metrics, distance_unit="mm")
    return score_case(pred, Reference(gt, spacing, roi), rules, prob=prob).by_class()


def _case(seed: int, shape=(8, 40, 36)):
    rng = np.random.default_rng(seed)
    gt = np.zeros(shape, np.int64)
    gt[2:6, 5:20, 4:18] = 1
    gt[1:7, 22:35, 20:30] = 2
    gt[3:5, 8:12, 25:33] = 3  # class 4 absent from gt
    pred = gt.copy()
    pred[:, :, 1:] = gt[:, :, :-1]  # shifted by one voxel
    pred[rng.random(shape) < 0.01] = 4  # scattered false positives of class 4
    pred[0:2][pred[0:2] == 2] = 0  # missed slices
    return pred, gt


@pytest.mark.parametrize("protocol", ["strict", "transunet"])
def test_score_case_equals_per_class_functions(protocol):
    pred, gt = _case(0)
    spacing = (3.0, 0.8, 0.7)
    metrics = ("dice", "iou", "sensitivity", "specificity", "hd95", "hd", "assd")
    res = _values(pred, gt, 5, spacing=spacing, protocol=protocol, metrics=metrics)
    assert sorted(res) == [1, 2, 3, 4]
    for c in range(1, 5):
        p, g = pred == c, gt == c
        sd = surface_distances(p, g, spacing)
        expect = {
            "dice": dice(p, g, protocol=protocol),
            "sensitivity": sensitivity(p, g, protocol=protocol),
            "specificity": specificity(p, g, protocol=protocol),
            "hd95": sd.hd95(protocol), "hd": sd.hd(protocol), "assd": sd.assd(protocol),
        }
        for m, v in expect.items():
            assert res[c][m] == pytest.approx(v, abs=1e-9, nan_ok=True), (c, m)
        if protocol == "transunet":
            assert all(np.isfinite(v) for v in res[c].values())
    # class 4: predicted but absent from the ground truth
    if protocol == "transunet":
        assert res[4]["dice"] == 1.0 and res[4]["hd95"] == 0.0
    else:  # nnU-Net: Dice 0; MONAI: distance to an empty surface is inf
        assert res[4]["dice"] == 0.0 and res[4]["hd95"] == math.inf
        assert math.isnan(res[4]["sensitivity"])


def test_score_case_matches_medpy_hd95():
    mb = pytest.importorskip("medpy.metric.binary")
    pred, gt = _case(1)
    res = _values(pred, gt, 5, spacing=(2.0, 1.0, 1.0))
    for c in (1, 2, 3):
        ref = mb.hd95(pred == c, gt == c, voxelspacing=(2.0, 1.0, 1.0))
        assert res[c]["hd95"] == pytest.approx(ref, abs=1e-6)
        assert res[c]["dice"] == pytest.approx(mb.dc(pred == c, gt == c))


def test_roi_and_auc():
    pred, gt = _case(2, shape=(8, 30, 30))
    pred, gt = pred[3], gt[3]  # a slice through classes 1-3
    roi = np.zeros(gt.shape, bool)
    roi[2:28, 3:27] = True
    rng = np.random.default_rng(0)
    prob = rng.random((5, *gt.shape))
    res = _values(pred, gt, 5, roi=roi, prob=prob,
                        metrics=("dice", "specificity", "auc"))
    for c in (1, 2, 3):
        p, g = (pred == c)[roi], (gt == c)[roi]
        assert res[c]["dice"] == pytest.approx(dice(p, g), nan_ok=True)
        assert res[c]["specificity"] == pytest.approx(specificity(p, g))
        assert res[c]["auc"] == pytest.approx(auc(prob[c][roi], g), nan_ok=True)
    assert all(res[c]["dice"] > 0 for c in (1, 2, 3))
    with pytest.raises(ConfigError, match="prob"):
        _values(pred, gt, 5, metrics=("auc",))


def test_empty_classes_both_protocols():
    z = np.zeros((4, 6, 6), np.int64)
    strict = _values(z, z, 3, metrics=("dice", "iou", "hd95", "assd"))
    assert all(math.isnan(v) for c in (1, 2) for v in strict[c].values())
    tu = _values(z, z, 3, protocol="transunet")
    assert tu == {c: {"dice": 0.0, "hd95": 0.0} for c in (1, 2)}
    g = z.copy()
    g[1, 2:4, 2:4] = 2
    tu = _values(z, g, 3, protocol="transunet")
    assert tu[2] == {"dice": 0.0, "hd95": 0.0}
    tu = _values(g, z, 3, protocol="transunet")  # predicted, absent from reference
    assert tu[2] == {"dice": 1.0, "hd95": 0.0}
    strict = _values(z, g, 3, spacing=(1.0, 1.0, 1.0))
    assert strict[2] == {"dice": 0.0, "hd95": math.inf}
    assert math.isnan(strict[1]["dice"])
    strict = _values(g, z, 3)
    assert strict[2] == {"dice": 0.0, "hd95": math.inf}


def test_summarize_and_tables(tmp_path):
    per_case = {f"case{i:02d}": _values(*_case(i), 5, spacing=(3.0, 0.8, 0.8),
                                               protocol="transunet") for i in range(3)}
    table = summarize(per_case, NAMES, protocol="transunet")
    assert table.class_names == NAMES[1:]
    assert table.num_cases == 3
    for k, c in enumerate(table.class_indices):
        expect = np.mean([per_case[cid][c]["dice"] for cid in per_case])
        assert table.per_class["dice"][k] == pytest.approx(expect)
    assert table.mean["hd95"] == pytest.approx(np.mean(table.per_class["hd95"]))
    md = format_table(table, model="resunet")
    assert "| resunet |" in md and "transunet" in md and "liver" in md
    assert f"{100 * table.mean['dice']:.2f}" in md
    rows = list(csv.DictReader(open(write_case_csv(per_case, tmp_path / "cases.csv", NAMES,
                                                   "transunet"))))
    assert len(rows) == 3 * 4
    assert rows[0]["class_name"] == "liver" and rows[0]["protocol"] == "transunet"
    assert float(rows[1]["hd95"]) == per_case["case00"][2]["hd95"]
    summary = list(csv.reader(open(write_summary_csv(table, tmp_path / "s" / "summary.csv"))))
    assert summary[0][4:] == NAMES[1:] and float(summary[1][3]) == table.mean["dice"]
    assert table.to_dict()["protocol"] == "transunet"


def test_bad_inputs():
    z = np.zeros((4, 4), np.int64)
    with pytest.raises(ConfigError, match="choose from"):
        _values(z, z, 2, metrics=("dsc",))
    with pytest.raises(DataError, match="integer"):
        _values(z.astype(float), z, 2)
    with pytest.raises(DataError, match="shape"):
        _values(z, np.zeros((4, 5), np.int64), 2)
    with pytest.raises(DataError, match="same"):
        summarize({"a": {1: {"dice": 1.0}}, "b": {1: {"hd95": 1.0}}})
    assert set(METRICS) >= {"dice", "iou", "hd95", "hd", "assd", "sensitivity", "auc"}
    assert math.isnan(hd95(z, z))
    with pytest.raises(DataError, match="outside 0..1"):
        _values(z + 2, z, 2)
    with pytest.raises(DataError, match="outside"):
        _values(z - 1, z, 2)
    with pytest.raises(DataError, match="None"):
        _values(None, z, 2)
    with pytest.raises(ConfigError, match="num_classes"):
        _values(z, z, 2.5)


def test_one_slice_volume_is_evaluated_as_2d():
    pred, gt = _case(3, shape=(8, 30, 28))
    pred, gt = pred[3:4], gt[3:4]  # one slice through classes 1-3
    metrics = ("dice", "hd95", "assd")
    as3d = _values(pred, gt, 5, spacing=(5.0, 0.5, 0.7), metrics=metrics)
    as2d = _values(pred[0], gt[0], 5, spacing=(0.5, 0.7), metrics=metrics)
    assert as3d == as2d
    assert as2d[1]["hd95"] == pytest.approx(hd95(pred[0] == 1, gt[0] == 1, (0.5, 0.7)))


def _issue_case(present: tuple[int, ...], shape=(2, 24, 24)) -> np.ndarray:
    """A label map holding a block of each class in ``present`` (of 1..4)."""
    lab = np.zeros(shape, np.int64)
    for c in present:
        lab[:, 5 * c - 4 : 5 * c, 2:20] = c
    return lab


def test_summary_never_counts_absent_or_missed_classes_as_success(tmp_path):
    """The issue's failure: a model that predicts only class 1. Old strict rule: a class
    absent from both scored Dice 1 and the mean looked half right."""
    gts = {"a": _issue_case((1, 2)), "b": _issue_case((1,)), "c": _issue_case((1, 3))}
    preds = {k: np.where(g == 1, 1, 0) for k, g in gts.items()}
    per_case = {k: _values(preds[k], gts[k], 5, metrics=("dice", "hd95", "iou"))
                for k in gts}
    predicted = set().union(*(present_classes(p, 5) for p in preds.values()))
    table = summarize(per_case, NAMES, predicted=predicted)
    assert table.per_class["dice"][0] == 1.0 and table.counts["dice"] == [3, 1, 1, 0]
    assert table.per_class["dice"][1:3] == [0.0, 0.0]
    assert math.isnan(table.per_class["dice"][3])  # tumour: nowhere, not scored
    assert table.per_class["hd95"][1] == math.inf
    assert table.mean["dice"] == pytest.approx(1 / 3)  # over 3 scored classes, not 0.75
    assert table.classes_in_mean("dice") == 3
    assert table.never_predicted == [2, 3, 4]
    assert table.never_predicted_names == ["kidney", "spleen", "tumour"]
    md = format_table(table, model="m")
    assert "| liver | 100.00 | 3 | 0.00 | 3 | 100.00 | 3 |" in md
    assert "| tumour (never predicted) | n/a | 0 | n/a | 0 | n/a | 0 |" in md
    assert "3/4 classes" in md
    assert "never predicted 3 of 4 class(es) in any of the 3 case(s): kidney" in md
    assert never_predicted_warning(table).startswith("warning: the model never predicted")
    d = table.to_dict()
    assert d["classes"][1]["n_dice"] == 1 and d["never_predicted"] == ["kidney", "spleen",
                                                                       "tumour"]
    rows = list(csv.reader(open(write_summary_csv(table, tmp_path / "s.csv"))))
    n_dice = next(r for r in rows if r[0] == "n_dice")
    assert n_dice[3:] == ["3", "3", "1", "1", "0"]
    # the same model under the TransUNet rules: every case counts, absent-both is 0
    per_case = {k: _values(preds[k], gts[k], 5, protocol="transunet") for k in gts}
    tu = summarize(per_case, NAMES, protocol="transunet", predicted=predicted)
    assert tu.per_class["dice"] == [1.0, 0.0, 0.0, 0.0] and tu.counts["dice"] == [3] * 4
    assert tu.mean["dice"] == pytest.approx(0.25) and tu.never_predicted == [2, 3, 4]


def test_summary_without_any_scored_class_is_nan_not_success():
    z = np.zeros((3, 8, 8), np.int64)
    table = summarize({"a": _values(z, z, 3), "b": _values(z, z, 3)},
                      predicted=set())
    assert math.isnan(table.mean["dice"]) and table.classes_in_mean("dice") == 0
    assert "n/a" in format_table(table)
    assert summarize({"a": _values(z, z, 3)}).never_predicted == []  # not checked
