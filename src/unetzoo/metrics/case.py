"""The one per-case evaluation: a predicted label map against its case, per class.

:func:`score_case` ``(pred, case, rules)`` is the single place where one case is scored,
for every caller (``unetzoo test`` and its ensembles, validation during training, the
post-processing search, the demo). ``case`` is a :class:`Reference`: the reference
labels and the case's own geometry (its spacing, or None when unknown; its ROI; its
ignore label; class names), built from a dataset's case by :meth:`Reference.of_case`.
``rules`` is a :class:`ScoringRules`: the protocol shared by all cases (class count,
empty-mask protocol, metrics, distance unit, NSD tolerance). The result, a
:class:`CaseScore`, holds the counts and values per class, the unit its distances are
in, and projects itself as ``{class: {metric: value}}`` (:meth:`CaseScore.by_class`)
or nnU-Net's per-case JSON record (:meth:`CaseScore.record`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

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
#: Metrics of the per-case JSON record, in its order (no AUC: it needs probabilities).
RECORD_METRICS = OVERLAP_METRICS + DISTANCE_METRICS + ("nsd",)

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
    #: the spacing as given, one entry per axis of the label map (None: voxels)
    given_spacing: tuple[float, ...] | None


def _prepare(
    pred: object, ref: Reference, num_classes: int, spacing, prob, need_prob: bool,
) -> _Case:
    ignore_label = ref.ignore_label
    pred = as_labels(pred, "predicted", num_classes)
    gt = as_labels(ref.labels, "ground-truth", num_classes, ignore_label)
    if pred.shape != gt.shape:
        raise DataError(
            f"prediction shape {pred.shape} differs from ground-truth shape {gt.shape}; "
            "resample the prediction to the label grid first"
        )
    sp = normalize_spacing(spacing, pred.ndim)
    given = None if spacing is None else tuple(float(s) for s in sp)
    roi = ref.roi
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
    return _Case(pred, gt, sp, roi, n_voxels, prob, given)


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


def spacing_known(case: Any) -> bool:
    """Whether ``case.spacing`` (a :class:`~unetzoo.data.base.Case`) holds real voxel
    sizes, not the 1.0 placeholder.

    A reader may say so with a ``spacing_known`` attribute; otherwise a case with an
    affine (the NIfTI readers) has a known spacing and one without (Synapse h5/npz, 2-D
    image folders) has none; NaN or non-positive voxel sizes are unknown.
    """
    known = getattr(case, "spacing_known", None)
    if known is None:
        known = getattr(case, "affine", None) is not None
    # A header without voxel sizes (NIfTI pixdim 0, no qform/sform) reads as NaN spacing.
    spacing = np.asarray(getattr(case, "spacing", ()) or (), dtype=np.float64)
    return bool(known) and bool(np.all(np.isfinite(spacing)) and np.all(spacing > 0))


@dataclass(frozen=True)
class Reference:
    """One case as the scorer sees it: its reference labels and its own geometry.

    Attributes:
        labels: integer label map, 2-D ``(H, W)`` or 3-D ``(D, H, W)``; 0 is background.
            A ``(1, H, W)`` volume (a 2-D dataset's case) is scored as the 2-D image.
        spacing: voxel size per array axis in mm (one number or one per axis), or None
            when the case's spacing is unknown: distances are then in voxels.
        roi: boolean mask of the scored region (e.g. DRIVE's field of view); voxels
            outside count for nothing (neither TN nor FP, background for the distances).
        ignore_label: nnU-Net's ignore label: voxels whose reference holds it are left
            out as those outside ``roi`` (the reference may hold it even when it is
            ``>= num_classes``).
        class_names: names indexed by class (0 background) for the per-case record.
    """

    labels: np.ndarray
    spacing: float | tuple[float, ...] | None = None
    roi: np.ndarray | None = None
    ignore_label: int | None = None
    class_names: tuple[str, ...] = ()

    @classmethod
    def of_case(cls, case: Any, class_names: Sequence[str] | None = None) -> Reference:
        """The reference of a :class:`~unetzoo.data.base.Case` under its own rules: its
        label, ROI, ignore label, and its spacing when known (:func:`spacing_known`)."""
        if case.label is None:
            raise DataError(f"case {getattr(case, 'id', '?')!r} has no label to score against")
        spacing = tuple(float(s) for s in case.spacing) if spacing_known(case) else None
        names = getattr(case, "class_names", ()) if class_names is None else class_names
        return cls(case.label, spacing, case.roi, getattr(case, "ignore_label", None),
                   tuple(names or ()))

    def scored_region(self) -> np.ndarray | None:
        """Boolean mask of the scored voxels (``roi`` less the ``ignore_label`` voxels);
        None when every voxel counts."""
        roi = None if self.roi is None else np.asarray(self.roi) != 0
        if self.ignore_label is None:
            return roi
        keep = np.asarray(self.labels) != self.ignore_label
        return keep if roi is None else keep & roi


@dataclass(frozen=True)
class ScoringRules:
    """The scoring protocol, the same for every case of an evaluation.

    Attributes:
        num_classes: classes including background; ``1 .. num_classes - 1`` are scored.
        protocol: empty-mask rule, ``"strict"`` (nnU-Net / MONAI: undefined values are
            NaN) or ``"transunet"`` (TransUNet's tables); see docs/metrics.md.
        metrics: any of :data:`METRICS`; may be empty (counts only).
        distance_unit: ``"mm"`` (distances with the case's spacing when it is known, in
            voxels when it is not), ``"voxels"`` (never the spacing), or None: the
            protocol's rule, ``"mm"`` under ``"strict"`` and ``"voxels"`` under
            ``"transunet"`` (TransUNet's test script calls medpy without spacing).
        nsd_tolerance: NSD's tolerance ``tau`` in the distances' unit.
        connectivity: surface neighbourhood for the distances (1, medpy's default).
        workers: threads for the classes' surface distances (default: the cores this
            process may use; 1: serial). Values do not depend on it.
    """

    num_classes: int
    protocol: Literal["strict", "transunet"] = "strict"
    metrics: tuple[str, ...] = ("dice", "hd95")
    distance_unit: Literal["mm", "voxels"] | None = None
    nsd_tolerance: float = 1.0
    connectivity: int = 1
    workers: int | None = None

    def __post_init__(self) -> None:
        check_num_classes(self.num_classes)
        check_protocol(self.protocol)
        object.__setattr__(self, "metrics", check_metrics(self.metrics, allow_empty=True))
        if self.distance_unit not in (None, "mm", "voxels"):
            raise ConfigError(f"distance_unit={self.distance_unit!r}; use 'mm', 'voxels' or None")
        if "nsd" in self.metrics:
            object.__setattr__(self, "nsd_tolerance", check_tolerance(self.nsd_tolerance))

    @property
    def uses_spacing(self) -> bool:
        """Whether distances use a case's known spacing (else they are in voxels)."""
        unit = self.distance_unit or ("mm" if self.protocol == "strict" else "voxels")
        return unit == "mm"


@dataclass(frozen=True)
class CaseScore:
    """What :func:`score_case` found for one case.

    Attributes:
        classes: ``{class_index: ClassScore(confusion, values)}`` for ``1 .. K - 1``.
        spacing: the voxel size the distances used (per axis of the label map), None
            when they are in voxels.
        rules: the rules it was scored under.
        class_names: the reference's class names.
    """

    classes: dict[int, ClassScore]
    spacing: tuple[float, ...] | None
    rules: ScoringRules
    class_names: tuple[str, ...] = ()

    @property
    def distance_unit(self) -> str:
        """``"mm"`` or ``"voxels"``: the unit of HD95, HD, ASSD and NSD's tolerance."""
        return "voxels" if self.spacing is None else "mm"

    def by_class(self) -> dict[int, dict[str, float]]:
        """``{class_index: {metric: value}}`` (the input of :func:`summarize`)."""
        return {c: {m: float(v) for m, v in s.values.items()} for c, s in self.classes.items()}

    def record(self) -> dict[str, Any]:
        """nnU-Net's per-case JSON record: ``{"classes": {"1": {"name", "tp", "fp", "fn",
        "tn", "n_pred", "n_ref", <metric>: value ...}, ...}, "spacing": [...] | None,
        "distance_units": "mm" | "voxels", "protocol", "nsd_tolerance"}``, with the
        metrics of :data:`RECORD_METRICS` that were scored (NaN / inf as they are:
        :func:`unetzoo.metrics.per_case.write_json` writes them as strict JSON)."""
        names = self.class_names
        classes: dict[str, dict[str, Any]] = {}
        for c, score in self.classes.items():
            conf = score.confusion
            classes[str(c)] = {
                "name": names[c] if c < len(names) else str(c),
                "tp": conf.tp, "fp": conf.fp, "fn": conf.fn, "tn": conf.tn,
                "n_pred": conf.pred_size, "n_ref": conf.gt_size,
                **{m: score.values[m] for m in RECORD_METRICS if m in score.values},
            }
        return {
            "classes": classes,
            "spacing": None if self.spacing is None else [float(s) for s in self.spacing],
            "distance_units": self.distance_unit,
            "protocol": self.rules.protocol,
            "nsd_tolerance": float(self.rules.nsd_tolerance),
        }


def score_case(
    pred: np.ndarray, case: Reference, rules: ScoringRules, *, prob: np.ndarray | None = None
) -> CaseScore:
    """Score one predicted label map against its case: the one per-case evaluation.

    Checks the inputs, leaves out the voxels outside ``case.roi`` and those whose
    reference is ``case.ignore_label``, counts TP / FP / FN / TN per class on the class's
    bounding boxes, computes each class's surface distances once (in threads,
    :mod:`unetzoo.metrics.parallel`) and derives every metric of ``rules`` from those.

    Args:
        pred: integer label map of the reference's shape.
        case: the reference labels and the case's geometry (:class:`Reference`).
        rules: the scoring protocol (:class:`ScoringRules`).
        prob: class probabilities ``(num_classes, *pred.shape)``, needed only for
            ``"auc"`` (one-vs-rest AUC of class ``c`` against the reference ``== c``).

    Returns:
        a :class:`CaseScore`. Under ``"strict"`` a metric that is undefined for the case
        is NaN (e.g. Dice and HD95 of a class absent from both maps, never 1.0) and a
        distance to an empty mask is ``inf``; under ``"transunet"`` values are always
        finite. NSD follows :mod:`unetzoo.metrics.nsd` under both protocols.

    Bad input (None, NaN, non-integer label maps, labels outside ``0..num_classes-1``,
    mismatched shapes, bad spacing) is a one-line :class:`DataError` /
    :class:`ConfigError`.
    """
    if not isinstance(case, Reference) or not isinstance(rules, ScoringRules):
        raise ConfigError("score_case(pred, case, rules) takes a metrics.Reference and a "
                          "metrics.ScoringRules")
    k, metrics = rules.num_classes, rules.metrics
    spacing = case.spacing if rules.uses_spacing else None
    prep = _prepare(pred, case, k, spacing, prob, "auc" in metrics)
    boxes_p, boxes_g = class_boxes(prep.pred, k), class_boxes(prep.gt, k)
    want_distances = any(m in DISTANCE_METRICS or m == "nsd" for m in metrics)
    # The classes' surface distances, once, in parallel threads (metrics/parallel.py).
    distances = (class_surface_distances(prep.pred, prep.gt, boxes_p, boxes_g, prep.spacing,
                                         rules.connectivity, workers=rules.workers)
                 if want_distances else {})
    tau = rules.nsd_tolerance if "nsd" in metrics else None
    empty = np.empty(0, dtype=np.float64)
    out: dict[int, ClassScore] = {}
    for c in range(1, k):
        conf = _confusion(prep, c, boxes_p[c - 1], boxes_g[c - 1])
        sd = None
        if want_distances:
            sd = distances.get(c) if conf.pred_size and conf.gt_size else None
            if sd is None:
                sd = SurfaceDistances(empty, empty, conf.pred_size == 0, conf.gt_size == 0)
        out[c] = ClassScore(conf, _class_values(prep, c, conf, sd, metrics, rules.protocol, tau))
    return CaseScore(out, prep.given_spacing, rules, case.class_names)
