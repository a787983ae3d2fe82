"""The one per-case evaluation: a predicted label map against its reference, per class.

:func:`score_case` is the single place where one case is scored. It checks the inputs,
leaves out the voxels outside ``roi`` and those whose reference is ``ignore_label``
(nnU-Net's ignore label), counts TP / FP / FN / TN per class on the class's bounding
boxes, computes each class's surface distances once (:mod:`unetzoo.metrics.parallel`)
and derives every requested metric from those. Everything else projects its result:

- :func:`unetzoo.metrics.evaluate_case` -> ``{class: {metric: value}}`` (the report's
  rows, the trainer's validation, the demo's score);
- :func:`unetzoo.metrics.per_case.case_metrics` -> nnU-Net's per-case JSON (counts and
  every metric);
- :func:`unetzoo.metrics.per_case.class_counts` -> the counts alone (postprocessing).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.ndimage import find_objects

from unetzoo.errors import ConfigError, DataError
from unetzoo.metrics._common import (
    bounding_box,
    check_label_array,
    check_protocol,
    normalize_spacing,
    union_box,
)
from unetzoo.metrics.nsd import check_tolerance, nsd_from_distances
from unetzoo.metrics.overlap import (
    Confusion,
    auc,
    dice_from_confusion,
    iou_from_confusion,
    sensitivity_from_confusion,
    specificity_from_confusion,
)
from unetzoo.metrics.parallel import class_surface_distances
from unetzoo.metrics.surface import SurfaceDistances

OVERLAP_METRICS = ("dice", "iou", "sensitivity", "specificity")
DISTANCE_METRICS = ("hd95", "hd", "assd")
# NSD is a fraction (shown in percent) computed from the same surface distances as HD95.
METRICS = OVERLAP_METRICS + DISTANCE_METRICS + ("nsd", "auc")

_OVERLAP = {
    "dice": dice_from_confusion,
    "iou": iou_from_confusion,
    "sensitivity": sensitivity_from_confusion,
    "specificity": specificity_from_confusion,
}

Box = tuple[slice, ...]


@dataclass(frozen=True)
class ClassScore:
    """One class of one case: its voxel counts and its metric values."""

    confusion: Confusion
    values: dict[str, float]


def check_metrics(metrics: Sequence[str], *, allow_empty: bool = False) -> tuple[str, ...]:
    """``metrics`` as a tuple of known metric names, or a one-line ConfigError."""
    metrics = tuple(metrics)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not (metrics or allow_empty):
        raise ConfigError(
            f"unknown metric(s) {unknown or metrics!r}; choose from: {', '.join(METRICS)}"
        )
    return metrics


def check_num_classes(num_classes: object) -> int:
    """``num_classes`` as an int >= 2 (background counts), or a one-line ConfigError."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) \
            or num_classes < 2:
        raise ConfigError(
            f"num_classes={num_classes!r}; it must be an integer that counts background "
            "too (>= 2)"
        )
    return int(num_classes)


def as_labels(
    arr: object, what: str, num_classes: int, ignore_label: int | None = None
) -> np.ndarray:
    """``arr`` as an integer label map with values in ``0 .. num_classes - 1`` (or the
    ``ignore_label``, when given), or a one-line DataError."""
    arr = check_label_array(arr, f"{what} label map", allow_float=False)
    if arr.dtype == np.bool_:
        arr = arr.view(np.uint8)
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= num_classes:
        outside = arr[(arr < 0) | (arr >= num_classes)]
        if ignore_label is not None:
            outside = outside[outside != ignore_label]
        if outside.size:
            bad = int(outside.min()) if int(outside.min()) < 0 else int(outside.max())
            raise DataError(
                f"{what} label map holds class {bad}, outside 0..{num_classes - 1} "
                f"(num_classes={num_classes})"
                + ("" if ignore_label is None else f" and the ignore label {ignore_label}")
                + "; pass the dataset's class count"
            )
    return arr


def class_boxes(labels: np.ndarray, num_classes: int) -> list[Box | None]:
    """Bounding box of each class ``1 .. num_classes - 1`` (None when absent), found for
    all classes in one pass within the foreground's box."""
    fg = bounding_box(labels != 0)
    if fg is None:
        return [None] * (num_classes - 1)
    boxes = find_objects(labels[fg], max_label=num_classes - 1)
    return [
        None if b is None else tuple(
            slice(s.start + o.start, s.stop + o.start) for s, o in zip(b, fg)
        )
        for b in boxes
    ]


@dataclass
class _Case:
    """Checked, masked inputs of one case (2-D when a one-slice volume was given)."""

    pred: np.ndarray
    gt: np.ndarray
    spacing: np.ndarray
    roi: np.ndarray | None
    n_voxels: int
    prob: np.ndarray | None


def _prepare(
    pred: object, gt: object, num_classes: int, spacing, roi, ignore_label: int | None,
    prob, need_prob: bool,
) -> _Case:
    pred = as_labels(pred, "predicted", num_classes)
    gt = as_labels(gt, "ground-truth", num_classes, ignore_label)
    if pred.shape != gt.shape:
        raise DataError(
            f"prediction shape {pred.shape} differs from ground-truth shape {gt.shape}; "
            "resample the prediction to the label grid first"
        )
    sp = normalize_spacing(spacing, pred.ndim)
    if roi is not None:
        roi = check_label_array(roi, "roi") != 0
        if roi.shape != pred.shape:
            raise DataError(f"roi shape {roi.shape} differs from label shape {pred.shape}")
    if ignore_label is not None:
        keep = gt != ignore_label
        roi = keep if roi is None else roi & keep
    n_voxels = pred.size
    if roi is not None:
        # voxels outside count for nothing: background in both maps, never TN
        pred, gt = np.where(roi, pred, 0), np.where(roi, gt, 0)
        n_voxels = int(np.count_nonzero(roi))
    if need_prob:
        prob = _check_prob(prob, num_classes, pred.shape)
    if pred.ndim == 3 and pred.shape[0] == 1:
        # a 2-D image stored as a one-slice volume (D = 1): evaluate it as 2-D, so that
        # its surface is the in-plane contour rather than every foreground pixel
        pred, gt, sp = pred[0], gt[0], sp[1:]
        roi = None if roi is None else roi[0]
        prob = None if prob is None else prob[:, 0]
    return _Case(pred, gt, sp, roi, n_voxels, prob)


def _check_prob(prob, num_classes: int, shape: tuple[int, ...]) -> np.ndarray:
    if prob is None:
        raise ConfigError("metric 'auc' needs class probabilities: pass prob=")
    prob = np.asarray(prob)
    if prob.dtype.kind not in "biuf":
        raise DataError(f"prob has dtype {prob.dtype}; pass class probabilities")
    if prob.shape != (num_classes, *shape):
        raise DataError(
            f"prob shape {prob.shape} must be (num_classes, *label shape) = "
            f"{(num_classes, *shape)}"
        )
    return prob


def _confusion(case: _Case, c: int, box_p: Box | None, box_g: Box | None) -> Confusion:
    box = union_box(box_p, box_g)
    if box is None:
        return Confusion(0, 0, 0, case.n_voxels)
    pc = case.pred[box] == c
    gc = case.gt[box] == c
    tp = int(np.count_nonzero(pc & gc))
    n_p = int(np.count_nonzero(pc))
    n_g = int(np.count_nonzero(gc))
    return Confusion(tp, n_p - tp, n_g - tp, case.n_voxels - n_p - n_g + tp)


def _class_values(
    case: _Case, c: int, conf: Confusion, sd: SurfaceDistances | None,
    metrics: tuple[str, ...], protocol: str, tau: float | None,
) -> dict[str, float]:
    values: dict[str, float] = {}
    for m in metrics:
        if m in _OVERLAP:
            values[m] = _OVERLAP[m](conf, protocol)
        elif m == "auc":
            scores, labels = case.prob[c], case.gt == c
            if case.roi is not None:
                scores, labels = scores[case.roi], labels[case.roi]
            values[m] = auc(scores, labels, protocol)
        elif m == "nsd":
            values[m] = nsd_from_distances(sd, tau)  # from HD95's distances: no second pass
        else:
            values[m] = getattr(sd, m)(protocol)
    return values


def score_case(
    pred: np.ndarray,
    gt: np.ndarray,
    num_classes: int,
    spacing: float | Sequence[float] | None = None,
    protocol: str = "strict",
    metrics: Sequence[str] = ("dice", "hd95"),
    roi: np.ndarray | None = None,
    *,
    ignore_label: int | None = None,
    prob: np.ndarray | None = None,
    connectivity: int = 1,
    workers: int | None = None,
    nsd_tolerance: float = 1.0,
) -> dict[int, ClassScore]:
    """Counts and metrics of every foreground class of one case.

    The arguments are those of :func:`unetzoo.metrics.evaluate_case` plus
    ``ignore_label``: voxels whose reference holds it are left out like voxels outside
    ``roi`` (the reference may hold it even when it is ``>= num_classes``). ``metrics``
    may be empty (counts only).

    Returns:
        ``{class_index: ClassScore(confusion, values)}`` for ``1 .. num_classes - 1``.
    """
    check_protocol(protocol)
    metrics = check_metrics(metrics, allow_empty=True)
    tau = check_tolerance(nsd_tolerance) if "nsd" in metrics else None
    k = check_num_classes(num_classes)
    case = _prepare(pred, gt, k, spacing, roi, ignore_label, prob, "auc" in metrics)
    boxes_p, boxes_g = class_boxes(case.pred, k), class_boxes(case.gt, k)
    want_distances = any(m in DISTANCE_METRICS or m == "nsd" for m in metrics)
    # The classes' surface distances, once, in parallel threads (metrics/parallel.py).
    distances = (class_surface_distances(case.pred, case.gt, boxes_p, boxes_g, case.spacing,
                                         connectivity, workers=workers)
                 if want_distances else {})
    empty = np.empty(0, dtype=np.float64)
    out: dict[int, ClassScore] = {}
    for c in range(1, k):
        conf = _confusion(case, c, boxes_p[c - 1], boxes_g[c - 1])
        sd = None
        if want_distances:
            sd = distances.get(c) if conf.pred_size and conf.gt_size else None
            if sd is None:
                sd = SurfaceDistances(empty, empty, conf.pred_size == 0, conf.gt_size == 0)
        out[c] = ClassScore(conf, _class_values(case, c, conf, sd, metrics, protocol, tau))
    return out


def evaluate_case(
    pred: np.ndarray, gt: np.ndarray, num_classes: int, *args: Any, **options: Any
) -> dict[int, dict[str, float]]:
    """Per-class metrics of one case: the values of :func:`score_case`, which takes the
    same arguments ``(pred, gt, num_classes, spacing=None, protocol="strict",
    metrics=("dice", "hd95"), roi=None, *, ignore_label, prob, connectivity, workers,
    nsd_tolerance)``; here at least one metric.

    Args:
        pred, gt: integer label maps of one shape, 2-D ``(H, W)`` or 3-D ``(D, H, W)``;
            0 is background.
        num_classes: number of classes including background; classes
            ``1 .. num_classes - 1`` are evaluated.
        spacing: voxel size per array axis (``(sz, sy, sx)`` in mm), one number, or None
            (voxel units, as TransUNet's published HD95).
        protocol: empty-mask rule, ``"strict"`` (default) or ``"transunet"``; see
            :mod:`unetzoo.metrics.overlap` and :mod:`unetzoo.metrics.surface`.
        metrics: any of ``dice, iou, sensitivity, specificity, hd95, hd, assd, nsd, auc``.
        roi: optional boolean mask of the evaluated region (e.g. DRIVE's field of view);
            voxels outside it are ignored (they count as neither TN nor FP).
        ignore_label: nnU-Net's ignore label: voxels whose reference holds it are
            ignored as those outside ``roi``.
        prob: class probabilities ``(num_classes, *pred.shape)``, needed only for
            ``"auc"`` (one-vs-rest AUC of class ``c`` against ``gt == c``).
        connectivity: surface neighbourhood for the distances (1, medpy's default).
        workers: threads for the classes' surface distances (default: the cores this
            process may use; 1: serial). Values do not depend on it.
        nsd_tolerance: NSD's tolerance ``tau`` in the units of ``spacing`` (mm; voxels
            when None). NSD follows :mod:`unetzoo.metrics.nsd` under both protocols:
            both masks empty -> NaN, exactly one empty -> 0.

    A ``(1, H, W)`` volume (a 2-D dataset's case) is evaluated as the 2-D image ``(H, W)``
    (the first spacing entry is dropped).

    Returns:
        ``{class_index: {metric: float}}`` for every foreground class. Under ``"strict"``
        a metric that is undefined for the case is NaN (e.g. Dice and HD95 of a class
        absent from both maps) and a distance to an empty mask is ``inf``; under
        ``"transunet"`` values are always finite.

    Bad input (None, NaN, non-integer label maps, labels outside ``0..num_classes-1``,
    mismatched shapes, bad spacing, no metric) is a one-line :class:`DataError` /
    :class:`ConfigError`.

    The surface distances are computed once per class for all distance metrics, on the
    bounding box of that class in either map (found for all classes in one pass).
    """
    scores = score_case(pred, gt, num_classes, *args, **options)
    if not any(s.values for s in scores.values()):
        check_metrics(())  # counts only is score_case's: here the one-line ConfigError
    return {c: s.values for c, s in scores.items()}
