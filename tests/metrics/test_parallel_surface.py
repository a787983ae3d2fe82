"""Per-class surface distances in threads: equal to the serial path, and really threaded."""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor

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


class RecordingPool(ThreadPoolExecutor):
    """A thread pool that records the thread each submitted task ran in."""

    def __init__(self, workers: int) -> None:
        super().__init__(max_workers=workers, thread_name_prefix="recorded")
        self.ran: list[str] = []

    def submit(self, fn, /, *args, **kwargs):
        def task():
            self.ran.append(threading.current_thread().name)
            return fn(*args, **kwargs)
        return super().submit(task)


def _boxes_and_spacing(pred, gt, classes, spacing=None):
    from unetzoo.metrics._common import normalize_spacing
    from unetzoo.metrics.case import class_boxes

    return (class_boxes(pred, classes), class_boxes(gt, classes),
            normalize_spacing(spacing, pred.ndim))


def test_classes_run_in_worker_threads():
    pred, gt = _case()
    boxes_p, boxes_g, sp = _boxes_and_spacing(pred, gt, 8)
    serial = parallel.class_surface_distances(pred, gt, boxes_p, boxes_g, sp, workers=1)
    with RecordingPool(2) as pool:
        threaded = parallel.class_surface_distances(pred, gt, boxes_p, boxes_g, sp,
                                                    workers=2, executor=pool)
        assert len(pool.ran) >= len(serial) == 4  # classes 1-4 are in both maps
        assert all(name.startswith("recorded") for name in pool.ran)
        pool.ran.clear()
        parallel.class_surface_distances(pred, gt, boxes_p, boxes_g, sp, workers=1,
                                         executor=pool)
        assert pool.ran == []  # one worker: serial, in the calling thread
    for c in serial:
        np.testing.assert_array_equal(threaded[c].pred_to_gt, serial[c].pred_to_gt)
        np.testing.assert_array_equal(threaded[c].gt_to_pred, serial[c].gt_to_pred)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_bad_worker_count_is_one_line(bad):
    pred, gt = _case()
    with pytest.raises(ConfigError, match="workers must be a whole number"):
        _values(pred, gt, 8, workers=bad)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.5, 0.7, 0.8)])
def test_a_dominant_class_is_split_and_its_distances_stay_the_same(spacing):
    from scipy.ndimage import binary_dilation

    rng = np.random.default_rng(3)
    gt = np.zeros((24, 48, 48), np.uint8)
    gt[2:22, 5:40, 4:44] = rng.random((20, 35, 40)) < 0.97  # a big ragged class 1
    gt[3:6, 42:46, 42:46] = 2
    pred = gt.copy()
    pred = np.where(binary_dilation(gt == 1, iterations=1) & (gt == 0), 1, pred)
    pred[20:23, 1:3, 1:3] = 1  # a distant false positive widens the class's box
    boxes_p, boxes_g, sp = _boxes_and_spacing(pred, gt, 3, spacing)

    serial = parallel.class_surface_distances(pred, gt, boxes_p, boxes_g, sp, workers=1)
    for workers in (2, 3):
        with RecordingPool(workers) as pool:
            split = parallel.class_surface_distances(pred, gt, boxes_p, boxes_g, sp,
                                                     workers=workers, executor=pool)
        # unsplit, the two classes are two tasks; the big one split is many more
        assert len(pool.ran) > 2 * workers, workers
        assert split.keys() == serial.keys() == {1, 2}
        for c in serial:
            np.testing.assert_array_equal(split[c].pred_to_gt, serial[c].pred_to_gt)
            np.testing.assert_array_equal(split[c].gt_to_pred, serial[c].gt_to_pred)


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
