"""Per-case TP / FP / FN and every metric per class as JSON (``CaseScore.record`` and
unetzoo.metrics.per_case)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from unetzoo.errors import DataError
from unetzoo.metrics import Reference, ScoringRules, dice, hd95, score_case
from unetzoo.metrics import per_case as cm
from unetzoo.metrics.case import RECORD_METRICS
from unetzoo.metrics.nsd import nsd


def _maps(seed=0, shape=(3, 12, 11), k=4):
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, k, size=shape)
    pred = np.where(rng.random(shape) < 0.7, gt, rng.integers(0, k, size=shape))
    return pred, gt


def _record(pred, gt, k, spacing=None, metrics=RECORD_METRICS, **kw):
    """The per-case JSON record of one case (the one scorer's record)."""
    return score_case(pred, Reference(gt, spacing, **kw), ScoringRules(k, metrics=metrics,
                                                                       nsd_tolerance=1.5)).record()


def test_hand_counts_and_ignore_label():
    gt = np.array([[0, 1, 1, 3], [2, 2, 3, 0]])
    pred = np.array([[1, 1, 0, 2], [2, 0, 1, 1]])
    row = _record(pred, np.where(gt == 3, 0, gt), 3)["classes"]["1"]
    assert (row["tp"], row["fp"], row["fn"]) == (1, 3, 1)
    # Without an ignore label, value 3 is outside the classes: refused, not miscounted.
    with pytest.raises(DataError, match="holds class 3"):
        _record(gt, gt, 3)
    rows = _record(pred, gt, 3, ignore_label=3)["classes"]  # 2 voxels left out
    assert [rows["1"][k] for k in ("tp", "fp", "fn", "tn")] == [1, 2, 1, 2]
    assert [rows["2"][k] for k in ("tp", "fp", "fn")] == [1, 0, 1]


def test_records_hold_counts_and_every_metric():
    pred, gt = _maps(1)
    sp = (2.0, 0.9, 1.1)
    res = _record(pred, gt, 4, sp, class_names=("bg", "a", "b", "c"))
    assert res["distance_units"] == "mm" and res["spacing"] == list(sp)
    for c in (1, 2, 3):
        row = res["classes"][str(c)]
        assert row["name"] == ["bg", "a", "b", "c"][c]
        assert set(cm.COUNT_KEYS) | set(RECORD_METRICS) <= set(row)
        assert row["n_ref"] == int((gt == c).sum()) and row["n_pred"] == int((pred == c).sum())
        assert row["dice"] == pytest.approx(dice(pred == c, gt == c))
        assert row["hd95"] == pytest.approx(hd95(pred == c, gt == c, sp))
        assert row["nsd"] == pytest.approx(nsd(pred == c, gt == c, 1.5, sp))
    res = _record(pred, gt, 4, metrics=("dice", "nsd"))
    assert res["distance_units"] == "voxels" and res["classes"]["1"]["name"] == "1"
    assert "hd95" not in res["classes"]["1"]


def test_absent_class_is_null_and_one_sided_distance_is_inf_in_json(tmp_path):
    gt = np.zeros((6, 6), int)
    gt[1:3, 1:3] = 1
    pred = np.zeros_like(gt)
    pred[4:6, 4:6] = 2  # class 1 missed, class 2 hallucinated, class 3 absent
    res = _record(pred, gt, 4)
    assert res["classes"]["1"]["dice"] == 0.0 and res["classes"]["2"]["dice"] == 0.0
    assert math.isinf(res["classes"]["1"]["hd95"]) and res["classes"]["1"]["nsd"] == 0.0
    assert math.isnan(res["classes"]["3"]["dice"]) and math.isnan(res["classes"]["3"]["nsd"])
    path = cm.write_json(tmp_path / "case.json", res)

    def refuse(name):
        raise AssertionError(f"non-standard JSON constant {name}")

    data = json.loads(path.read_text(), parse_constant=refuse)
    assert data["classes"]["3"]["dice"] is None
    assert data["classes"]["1"]["hd95"] == "inf"
    assert math.isinf(cm.read_json_metric(data["classes"]["1"]["hd95"]))
    assert math.isnan(cm.read_json_metric(data["classes"]["3"]["dice"]))


def test_summary_means_only_the_scored_cases():
    a = np.zeros((8, 8), int)
    a[2:5, 2:5] = 1
    b = np.zeros((8, 8), int)  # class 1 absent from both: not scored
    half = a.copy()
    half[2, 2:5] = 0
    cases = {
        "x": _record(a, a, 2, metrics=("dice",)),
        "y": _record(b, b, 2, metrics=("dice",)),
        "z": _record(half, a, 2, metrics=("dice",)),
    }
    s = cm.summarize_cases(cases)
    assert s["mean"]["1"]["dice"] == pytest.approx((1.0 + 0.8) / 2)
    assert s["mean"]["1"]["scored"]["dice"] == 2
    assert s["mean"]["1"]["tp"] == 9 + 6 and s["mean"]["1"]["fn"] == 3
    assert s["foreground_mean"]["dice"] == pytest.approx(0.9)
    assert set(s["metric_per_case"]) == {"x", "y", "z"}
