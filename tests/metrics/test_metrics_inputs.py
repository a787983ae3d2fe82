"""Metrics refuse what they cannot score (issue 13): one-line DataError, never a number
or a traceback from deep inside numpy / scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest

from unetzoo.errors import DataError
from unetzoo.metrics import (
    Reference,
    ScoringRules,
    assd,
    auc,
    dice,
    hd,
    hd95,
    iou,
    score_case,
    sensitivity,
)

MASK = np.zeros((6, 6), bool)
MASK[1:4, 2:5] = True
FUNCS = [dice, iou, sensitivity, hd95, hd, assd]


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and isinstance(exc.value, ValueError)
    return msg


@pytest.mark.parametrize("fn", FUNCS)
@pytest.mark.parametrize(
    ("pred", "gt", "match"),
    [
        (None, None, "None"),
        (None, MASK, "None"),
        (np.where(MASK, np.nan, 0.0), MASK, "NaN"),
        (MASK, np.where(MASK, np.inf, 0.0), "NaN or inf"),
        (MASK * 0.7, MASK, "fractional"),
        (np.array(1), np.array(1), "at least one dimension"),
        (np.zeros((0, 4)), np.zeros((0, 4)), "at least one dimension"),
        ("abc", "abc", "dtype"),
        (MASK.astype(object), MASK, "dtype"),
        (MASK.astype(complex), MASK, "dtype"),
        ([[0, 1], [1]], [[0, 1], [1]], "regular array"),
        (MASK, MASK[:, :5], "shape"),
    ],
)
def test_bad_masks_are_refused(fn, pred, gt, match):
    with pytest.raises(DataError, match=match) as exc:
        fn(pred, gt)
    _one_line(exc)


@pytest.mark.parametrize("fn", [hd95, hd, assd])
@pytest.mark.parametrize(
    "spacing", ["1.0", "abc", b"1", (1.0, "x"), (1.0,) * 3, (0.0, 1.0), (-1.0, 1.0),
                (math.nan, 1.0), (math.inf, 1.0), {"a": 1}, [[1.0, 1.0]]],
)
def test_bad_spacing_is_refused(fn, spacing):
    with pytest.raises(DataError, match="spacing") as exc:
        fn(MASK, MASK, spacing=spacing)
    _one_line(exc)


def test_accepted_inputs_score_the_same():
    """bool, any integer type, whole-number floats (a 0/1 mask read as float) and nested
    lists are one mask; a scalar spacing applies to every axis."""
    shifted = np.roll(MASK, 1, axis=1)
    ref = dice(MASK, shifted)
    assert 0 < ref < 1
    for p in (MASK.astype(np.uint8), MASK.astype(np.int64) * 3, MASK.astype(np.float32),
              MASK.tolist()):
        assert dice(p, shifted) == ref
    assert hd95(MASK, shifted, spacing=2.0) == hd95(MASK, shifted, spacing=(2.0, 2.0)) == 2.0


def test_score_case_refuses_bad_label_maps():
    z = np.zeros((4, 4), np.int64)
    for bad, match in [(None, "None"), (z.astype(float), "integer class indices"),
                       (np.array(0), "at least one dimension"), (z + 5, "outside 0..2")]:
        with pytest.raises(DataError, match=match) as exc:
            score_case(bad, Reference(z), ScoringRules(3))
        _one_line(exc)
    with pytest.raises(DataError, match="spacing"):
        score_case(z, Reference(z, "1 mm"), ScoringRules(3))
    with pytest.raises(DataError, match="roi"):
        score_case(z, Reference(z, roi=np.ones((4, 5), bool)), ScoringRules(3))


def test_auc_refuses_bad_scores():
    labels = np.array([0, 1, 1, 0], bool)
    for bad, match in [(None, "NoneType"), ("abcd", "str"), (np.array(["a"] * 4), "dtype"),
                       (np.array([0.1, np.nan, 0.3, 0.2]), "NaN")]:
        with pytest.raises(DataError, match=match):
            auc(bad, labels)
    with pytest.raises(DataError, match="None"):
        auc(np.zeros(4), None)
