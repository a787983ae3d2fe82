"""Overlap metrics on binary masks: Dice, IoU, sensitivity, specificity, and ROC AUC.

Masks are numpy arrays of one or more dimensions (2-D slices, 3-D volumes): boolean,
integer, or floating with whole numbers only; any nonzero value is foreground. None,
NaN, fractional values, 0-d arrays and mismatched shapes are a one-line
:class:`~unetzoo.errors.DataError` (a ``ValueError``). Every function takes ``protocol``
for empty masks (the table is in docs/metrics.md):

``"strict"`` (default; nnU-Net v2 and MONAI)
    A value whose definition divides by zero is undefined: NaN, which the report leaves
    out of its means and counts as "not scored". Dice and IoU are NaN when both masks are
    empty (nnU-Net's ``compute_metrics``) and 0.0 when exactly one is (a missed or a
    hallucinated structure). Sensitivity is NaN when the ground truth is empty,
    specificity when it fills the image, AUC when the ground truth has one class only.
``"transunet"``
    TransUNet's ``calculate_metric_percase`` rule for Dice (and IoU, the same family):
    prediction and ground truth non-empty -> the value; prediction non-empty and ground
    truth empty -> 1.0; prediction empty -> 0.0 (also when both are empty). TransUNet
    defines nothing else; sensitivity and specificity then give 1.0 for two empty masks
    and 0.0 for one, AUC 0.5, so this protocol never yields NaN (its means divide by
    every case, as the published script does).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from scipy.stats import rankdata

from unetzoo.errors import DataError
from unetzoo.metrics._common import as_masks, check_label_array, check_protocol


class Confusion(NamedTuple):
    """Voxel counts of a binary confusion matrix."""

    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def pred_size(self) -> int:
        return self.tp + self.fp

    @property
    def gt_size(self) -> int:
        return self.tp + self.fn


def confusion(pred: np.ndarray, gt: np.ndarray) -> Confusion:
    """Counts ``(tp, fp, fn, tn)`` of two masks of one shape (nonzero = foreground)."""
    pred, gt = as_masks(pred, gt)
    tp = int(np.count_nonzero(pred & gt))
    n_pred = int(np.count_nonzero(pred))
    n_gt = int(np.count_nonzero(gt))
    fp = n_pred - tp
    fn = n_gt - tp
    return Confusion(tp, fp, fn, int(pred.size) - tp - fp - fn)


def _transunet_rule(c: Confusion) -> float | None:
    """TransUNet's empty-mask value, or None when both masks are non-empty."""
    if c.pred_size > 0 and c.gt_size > 0:
        return None
    return 1.0 if c.pred_size > 0 else 0.0


def dice_from_confusion(c: Confusion, protocol: str = "strict") -> float:
    """Dice ``2 TP / (2 TP + FP + FN)`` from counts, with the empty-mask ``protocol``."""
    if check_protocol(protocol) == "transunet":
        fixed = _transunet_rule(c)
        if fixed is not None:
            return fixed
    denom = c.pred_size + c.gt_size
    return math.nan if denom == 0 else 2.0 * c.tp / denom


def iou_from_confusion(c: Confusion, protocol: str = "strict") -> float:
    """IoU (Jaccard) ``TP / (TP + FP + FN)`` from counts, with the empty-mask ``protocol``."""
    if check_protocol(protocol) == "transunet":
        fixed = _transunet_rule(c)
        if fixed is not None:
            return fixed
    denom = c.tp + c.fp + c.fn
    return math.nan if denom == 0 else c.tp / denom


def sensitivity_from_confusion(c: Confusion, protocol: str = "strict") -> float:
    """Sensitivity (recall) ``TP / (TP + FN)``; empty ground truth: NaN (strict), or 1.0
    if the prediction is empty too, else 0.0 (transunet)."""
    if c.gt_size == 0:
        if check_protocol(protocol) == "strict":
            return math.nan
        return 1.0 if c.pred_size == 0 else 0.0
    return c.tp / c.gt_size


def specificity_from_confusion(c: Confusion, protocol: str = "strict") -> float:
    """Specificity ``TN / (TN + FP)``; ground truth filling the image: NaN (strict), or
    1.0 if the prediction fills it too, else 0.0 (transunet)."""
    negatives = c.tn + c.fp
    if negatives == 0:
        if check_protocol(protocol) == "strict":
            return math.nan
        return 1.0 if c.fn == 0 else 0.0  # no negatives: fp == tn == 0
    return c.tn / negatives


def dice(pred: np.ndarray, gt: np.ndarray, protocol: str = "strict") -> float:
    """Dice similarity coefficient of two masks of one shape (2-D or 3-D).

    Equals medpy's ``dc`` whenever a mask is non-empty. Empty masks: see the module
    docstring (strict: both empty -> NaN, one empty -> 0.0).
    """
    return dice_from_confusion(confusion(pred, gt), protocol)


def iou(pred: np.ndarray, gt: np.ndarray, protocol: str = "strict") -> float:
    """Intersection over union (Jaccard index, medpy's ``jc``) of two masks of one shape."""
    return iou_from_confusion(confusion(pred, gt), protocol)


def sensitivity(pred: np.ndarray, gt: np.ndarray, protocol: str = "strict") -> float:
    """True-positive rate ``TP / (TP + FN)`` of two masks of one shape."""
    return sensitivity_from_confusion(confusion(pred, gt), protocol)


def specificity(pred: np.ndarray, gt: np.ndarray, protocol: str = "strict") -> float:
    """True-negative rate ``TN / (TN + FP)`` of two masks of one shape."""
    return specificity_from_confusion(confusion(pred, gt), protocol)


def auc(prob: np.ndarray, gt: np.ndarray, protocol: str = "strict") -> float:
    """Binary ROC AUC of foreground scores ``prob`` against the mask ``gt`` (same shape).

    Exact, from ranks (the Mann-Whitney U statistic): the probability that a random
    foreground voxel scores higher than a random background voxel, ties counting one
    half. ``prob`` is any real score (probability or logit). When ``gt`` has no
    foreground or no background voxel the AUC is undefined: NaN (strict), or 0.5, the
    value of a score that ranks nothing (transunet).
    """
    check_protocol(protocol)
    if prob is None or isinstance(prob, (str, bytes)):
        raise DataError(f"AUC scores are {type(prob).__name__}; pass a numeric array")
    scores = np.asarray(prob)
    labels = check_label_array(gt, "ground truth")
    if scores.dtype.kind not in "biuf":
        raise DataError(f"AUC scores have dtype {scores.dtype}; pass real numbers")
    if scores.shape != labels.shape:
        raise DataError(
            f"score shape {scores.shape} differs from ground-truth shape {labels.shape}; "
            "pass one foreground score per voxel"
        )
    scores = scores.ravel().astype(np.float64, copy=False)
    positives = labels.ravel() != 0
    if not np.all(np.isfinite(scores)):
        raise DataError("AUC scores contain NaN or inf; check the model output")
    n_pos = int(np.count_nonzero(positives))
    n_neg = positives.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan if protocol == "strict" else 0.5
    ranks = rankdata(scores)  # average ranks for ties -> ties count one half
    u = float(np.sum(ranks[positives])) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * float(n_neg))
