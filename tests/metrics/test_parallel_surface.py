"""Per-class surface distances in threads: equal to the serial path, and really threaded."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest

from unetzoo.errors import ConfigError
from unetzoo.metrics import Reference, ScoringRules, parallel, score_case


def _case(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Six classes on a 12 x 40 x 40 grid: overlapping blobs, one class only predicted,
    one only in the reference, one in neither."""
    rng = np.random.default_rng(seed)
    gt = np.zeros((12, 40, 40), np.uint8)
    pred = np.zeros_like(gt)
    for c, (z, y, x) in enumerate([(3, 8, 8), (6, 20, 25), (8, 30, 10), (5, 12, 30)], start=1):
        gt[z - 2 : z + 3, y - 5 : y + 6, x - 6 : x + 5] = c
        dz, dy, dx = rng.integers(-1, 2, 3)
        pred[z - 2 + dz : z + 2 + dz, y - 4 + dy : y + 7 + dy, x - 6 + dx : x + 4 + dx] = c
    pred[0:2, 0:3, 35:40] = 5  # predicted only
    gt[10:12, 35:40, 0:4] = 6  # reference only; class 7 nowhere
    pred[rng.random(gt.shape) < 0.002] = 2  # scattered false positives
    return pred, gt


def _values(pred, gt, k, spacing=None, protocol="strict", metrics=("dice", "hd95"), workers=None):
    rules = ScoringRules(k, protocol, metrics, distance_unit="mm", workers=workers)
    return score_case(pred, Reference(gt, spacing), rules).by_class()


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        a[c].keys() == b[c].keys()
        and all((math.isnan(a[c][m]) and math.isnan(b[c][m])) or a[c][m] == b[c][m]
                for m in a[c])
        for c in a
    )


@pytest.mark.parametrize("protocol", ["strict", "transunet"])
@pytest.mark.parametrize("spacing", [None, (2.5, 0.7, 0.8)])
def test_threads_give_the_serial_values(protocol, spacing):
    pred, gt = _case()
    metrics = ("dice", "hd95", "hd", "assd")
    serial = _values(pred, gt, 8, spacing, protocol, metrics, workers=1)
    for workers in (2, 3, None):
        threaded = _values(pred, gt, 8, spacing, protocol, metrics, workers=workers)
        assert _same(serial, threaded)
    assert math.isnan(serial[7]["dice"]) if protocol == "strict" else serial[7]["dice"] == 0.0
    assert serial[5]["hd95"] == (math.inf if protocol == "strict" else 0.0)


def test_classes_run_in_worker_threads(monkeypatch):
    seen: list[str] = []
    real = parallel._distances_in_box

    def spy(*args):
        seen.append(threading.current_thread().name)
        return real(*args)

    monkeypatch.setattr(parallel, "_distances_in_box", spy)
    monkeypatch.setattr(parallel, "_volume", lambda box: 1)  # equal boxes: none is split
    pred, gt = _case()
    _values(pred, gt, 8, workers=2)
    assert len(seen) == 4 and all(n.startswith("unetzoo-surface") for n in seen)
    seen.clear()
    _values(pred, gt, 8, workers=1)
    assert seen == [threading.current_thread().name] * 4


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_bad_worker_count_is_one_line(bad):
    pred, gt = _case()
    with pytest.raises(ConfigError, match="workers must be a whole number"):
        _values(pred, gt, 8, workers=bad)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.5, 0.7, 0.8)])
def test_a_dominant_class_is_split_and_its_distances_stay_the_same(spacing, monkeypatch):
    from scipy.ndimage import binary_dilation

    from unetzoo.metrics._common import normalize_spacing
    from unetzoo.metrics.case import class_boxes as _class_boxes

    rng = np.random.default_rng(3)
    gt = np.zeros((24, 48, 48), np.uint8)
    gt[2:22, 5:40, 4:44] = rng.random((20, 35, 40)) < 0.97  # a big ragged class 1
    gt[3:6, 42:46, 42:46] = 2
    pred = gt.copy()
    pred = np.where(binary_dilation(gt == 1, iterations=1) & (gt == 0), 1, pred)
    pred[20:23, 1:3, 1:3] = 1  # a distant false positive widens the class's box
    boxes = (_class_boxes(pred, 3), _class_boxes(gt, 3))
    sp = normalize_spacing(spacing, 3)
    calls = []
    real = parallel._split_distances
    monkeypatch.setattr(parallel, "_split_distances", lambda *a: calls.append(a[2]) or real(*a))

    serial = parallel.class_surface_distances(pred, gt, *boxes, sp, workers=1)
    for workers in (2, 3):
        split = parallel.class_surface_distances(pred, gt, *boxes, sp, workers=workers)
        assert split.keys() == serial.keys() == {1, 2}
        for c in serial:
            np.testing.assert_array_equal(split[c].pred_to_gt, serial[c].pred_to_gt)
            np.testing.assert_array_equal(split[c].gt_to_pred, serial[c].gt_to_pred)
    assert calls == [1, 1]  # the big class was split, the small one was not


def test_per_case_nsd_and_hd95_equal_the_one_class_functions():
    from unetzoo.metrics.nsd import nsd_from_distances
    from unetzoo.metrics.surface import surface_distances

    pred, gt = _case()
    spacing = (2.5, 0.7, 0.8)
    rules = ScoringRules(8, metrics=("hd95", "assd", "nsd"), nsd_tolerance=1.5)
    got = score_case(pred, Reference(gt, spacing), rules).record()["classes"]
    for c in range(1, 8):
        sd = surface_distances(pred == c, gt == c, spacing)
        for metric, want in (("hd95", sd.hd95()), ("assd", sd.assd()),
                             ("nsd", nsd_from_distances(sd, 1.5))):
            value = got[str(c)][metric]
            assert (math.isnan(value) and math.isnan(want)) or value == want, (c, metric)
