"""Per-case, per-class evaluation of label maps and the per-class mean table of the papers.

``evaluate_case`` turns one predicted label map and its ground truth into
``{class_index: {metric: value}}`` for the foreground classes ``1 .. num_classes - 1``;
``summarize`` averages many cases into a :class:`SummaryTable` (per-class means over
cases, and the mean over classes, as in TransUNet-style tables); ``format_table`` and
the CSV writers turn it into files. Every table records the empty-mask protocol used.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.ndimage import find_objects

from unetzoo.errors import ConfigError, DataError
from unetzoo.metrics._common import (
    bounding_box,
    check_protocol,
    diagonal_penalty,
    normalize_spacing,
    union_box,
)
from unetzoo.metrics.overlap import (
    Confusion,
    auc,
    dice_from_confusion,
    iou_from_confusion,
    sensitivity_from_confusion,
    specificity_from_confusion,
)
from unetzoo.metrics.surface import SurfaceDistances, _distances_in_box

OVERLAP_METRICS = ("dice", "iou", "sensitivity", "specificity")
DISTANCE_METRICS = ("hd95", "hd", "assd")
METRICS = OVERLAP_METRICS + DISTANCE_METRICS + ("auc",)

# Column titles used by the tables; fractions are shown in percent.
_TITLES = {
    "dice": "DSC (%)",
    "iou": "IoU (%)",
    "sensitivity": "Sensitivity (%)",
    "specificity": "Specificity (%)",
    "auc": "AUC (%)",
    "hd95": "HD95",
    "hd": "HD",
    "assd": "ASSD",
}

PROTOCOL_NOTES = {
    "strict": "strict (both masks empty: Dice 1, distances 0; one empty: Dice 0, "
    "distances = image diagonal)",
    "transunet": "transunet (TransUNet calculate_metric_percase: prediction present and "
    "ground truth empty: Dice 1, HD95 0; prediction empty: Dice 0, HD95 0)",
}

CaseResult = dict[int, dict[str, float]]


def _check_metrics(metrics: Sequence[str]) -> tuple[str, ...]:
    metrics = tuple(metrics)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise ConfigError(
            f"unknown metric(s) {unknown or metrics!r}; choose from: {', '.join(METRICS)}"
        )
    return metrics


def _as_labels(arr: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.dtype == np.bool_:
        return arr.view(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        raise DataError(
            f"{what} label map has dtype {arr.dtype}; pass integer class indices "
            "(e.g. argmax of the logits), not probabilities"
        )
    return arr


def _class_boxes(labels: np.ndarray, num_classes: int) -> list[tuple[slice, ...] | None]:
    """Bounding box of each class ``1 .. num_classes - 1`` (None when absent)."""
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


def evaluate_case(
    pred: np.ndarray,
    gt: np.ndarray,
    num_classes: int,
    spacing: float | Sequence[float] | None = None,
    protocol: str = "strict",
    metrics: Sequence[str] = ("dice", "hd95"),
    roi: np.ndarray | None = None,
    *,
    prob: np.ndarray | None = None,
    connectivity: int = 1,
) -> CaseResult:
    """Per-class metrics of one case.

    Args:
        pred, gt: integer label maps of one shape, 2-D ``(H, W)`` or 3-D ``(D, H, W)``;
            0 is background.
        num_classes: number of classes including background; classes
            ``1 .. num_classes - 1`` are evaluated.
        spacing: voxel size per array axis (``(sz, sy, sx)`` in mm), one number, or None
            (voxel units, as TransUNet's published HD95).
        protocol: empty-mask rule, ``"strict"`` (default) or ``"transunet"``; see
            :mod:`unetzoo.metrics.overlap` and :mod:`unetzoo.metrics.surface`.
        metrics: any of ``dice, iou, sensitivity, specificity, hd95, hd, assd, auc``.
        roi: optional boolean mask of the evaluated region (e.g. DRIVE's field of view);
            voxels outside it are ignored (they count as neither TN nor FP).
        prob: class probabilities ``(num_classes, *pred.shape)``, needed only for
            ``"auc"`` (one-vs-rest AUC of class ``c`` against ``gt == c``).
        connectivity: surface neighbourhood for the distances (1, medpy's default).

    A ``(1, H, W)`` volume (a 2-D dataset's case) is evaluated as the 2-D image ``(H, W)``
    (the first spacing entry is dropped).

    Returns:
        ``{class_index: {metric: float}}`` for every foreground class; never NaN or inf.

    The surface distances are computed once per class for all distance metrics, on the
    bounding box of that class in either map (found for all classes in one pass).
    """
    check_protocol(protocol)
    metrics = _check_metrics(metrics)
    if num_classes < 2:
        raise ConfigError(f"num_classes={num_classes}; it must count background too (>= 2)")
    pred = _as_labels(pred, "predicted")
    gt = _as_labels(gt, "ground-truth")
    if pred.shape != gt.shape:
        raise DataError(
            f"prediction shape {pred.shape} differs from ground-truth shape {gt.shape}; "
            "resample the prediction to the label grid first"
        )
    sp = normalize_spacing(spacing, pred.ndim)
    n_voxels = pred.size
    if roi is not None:
        roi = np.asarray(roi, dtype=bool)
        if roi.shape != pred.shape:
            raise DataError(f"roi shape {roi.shape} differs from label shape {pred.shape}")
        pred = np.where(roi, pred, 0)
        gt = np.where(roi, gt, 0)
        n_voxels = int(np.count_nonzero(roi))
    if "auc" in metrics:
        if prob is None:
            raise ConfigError("metric 'auc' needs class probabilities: pass prob=")
        prob = np.asarray(prob)
        if prob.shape != (num_classes, *pred.shape):
            raise DataError(
                f"prob shape {prob.shape} must be (num_classes, *label shape) = "
                f"{(num_classes, *pred.shape)}"
            )
    if pred.ndim == 3 and pred.shape[0] == 1:
        # a 2-D image stored as a one-slice volume (D = 1): evaluate it as 2-D, so that
        # its surface is the in-plane contour rather than every foreground pixel
        pred, gt, sp = pred[0], gt[0], sp[1:]
        roi = None if roi is None else roi[0]
        prob = None if prob is None else prob[:, 0]
    penalty = diagonal_penalty(pred.shape, sp)
    want_distances = any(m in DISTANCE_METRICS for m in metrics)
    # One pass per map finds every class's bounding box (within the foreground's box);
    # the rest works on crops.
    boxes_p = _class_boxes(pred, num_classes)
    boxes_g = _class_boxes(gt, num_classes)
    empty = np.empty(0, dtype=np.float64)

    result: CaseResult = {}
    for c in range(1, num_classes):
        box_p, box_g = boxes_p[c - 1], boxes_g[c - 1]
        box = union_box(box_p, box_g)
        if box is None:
            conf = Confusion(0, 0, 0, n_voxels)
        else:
            pc = pred[box] == c
            gc = gt[box] == c
            tp = int(np.count_nonzero(pc & gc))
            n_p = int(np.count_nonzero(pc))
            n_g = int(np.count_nonzero(gc))
            conf = Confusion(tp, n_p - tp, n_g - tp, n_voxels - n_p - n_g + tp)
        values: dict[str, float] = {}
        if want_distances:
            if conf.pred_size and conf.gt_size:
                sd = _distances_in_box(pc, gc, sp, connectivity, "auto", penalty)
            else:
                sd = SurfaceDistances(empty, empty, conf.pred_size == 0, conf.gt_size == 0,
                                      penalty)
        for m in metrics:
            if m == "dice":
                values[m] = dice_from_confusion(conf, protocol)
            elif m == "iou":
                values[m] = iou_from_confusion(conf, protocol)
            elif m == "sensitivity":
                values[m] = sensitivity_from_confusion(conf, protocol)
            elif m == "specificity":
                values[m] = specificity_from_confusion(conf, protocol)
            elif m == "auc":
                scores, labels = prob[c], gt == c
                if roi is not None:
                    scores, labels = scores[roi], labels[roi]
                values[m] = auc(scores, labels, protocol)
            else:
                values[m] = getattr(sd, m)(protocol)
        result[c] = values
    return result


@dataclass
class SummaryTable:
    """Per-class means over cases and their mean over classes.

    ``per_class[metric][i]`` is the mean over cases of class ``class_indices[i]``
    (named ``class_names[i]``); ``mean[metric]`` is the mean of those per-class means
    (the "mean DSC" / "mean HD95" of the papers).
    """

    metrics: list[str]
    class_indices: list[int]
    class_names: list[str]
    per_class: dict[str, list[float]]
    mean: dict[str, float]
    num_cases: int
    protocol: str
    notes: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of the table."""
        return {
            "protocol": self.protocol,
            "num_cases": self.num_cases,
            "metrics": list(self.metrics),
            "classes": [
                {"index": i, "name": n, **{m: self.per_class[m][k] for m in self.metrics}}
                for k, (i, n) in enumerate(zip(self.class_indices, self.class_names))
            ],
            "mean": dict(self.mean),
            **({"notes": self.notes} if self.notes else {}),
        }


def _class_name(class_names: Sequence[str] | None, c: int) -> str:
    if class_names is not None and c < len(class_names):
        return str(class_names[c])
    return f"class {c}"


def summarize(
    per_case: Mapping[str, CaseResult],
    class_names: Sequence[str] | None = None,
    protocol: str = "strict",
) -> SummaryTable:
    """Average ``{case_id: evaluate_case(...)}`` into the papers' table.

    Args:
        per_case: per-case results; every case must hold the same classes and metrics.
        class_names: names indexed by class (index 0 = background, as
            ``SegDataset.class_names``); missing names become ``"class <i>"``.
        protocol: the protocol the results were computed with (recorded in the table).
    """
    check_protocol(protocol)
    if not per_case:
        raise DataError("no cases to summarize; evaluate at least one case")
    first = next(iter(per_case.values()))
    classes = sorted(first)
    metrics = list(next(iter(first.values())).keys()) if classes else []
    for case_id, res in per_case.items():
        if sorted(res) != classes or any(list(res[c].keys()) != metrics for c in classes):
            raise DataError(
                f"case {case_id!r} has other classes or metrics than the first case; "
                "evaluate every case with the same num_classes and metrics"
            )
    per_class = {
        m: [float(np.mean([res[c][m] for res in per_case.values()])) for c in classes]
        for m in metrics
    }
    mean = {m: float(np.mean(per_class[m])) if classes else math.nan for m in metrics}
    return SummaryTable(
        metrics=metrics,
        class_indices=classes,
        class_names=[_class_name(class_names, c) for c in classes],
        per_class=per_class,
        mean=mean,
        num_cases=len(per_case),
        protocol=protocol,
    )


def _fmt(metric: str, value: float, percent: bool, digits: int) -> str:
    if metric not in DISTANCE_METRICS and percent:
        value = 100.0 * value
    return f"{value:.{digits}f}"


def format_table(
    table: SummaryTable,
    model: str = "unetzoo",
    *,
    percent: bool = True,
    digits: int = 2,
    distance_unit: str = "mm",
) -> str:
    """Markdown: the papers' line (model, mean DSC, mean HD95, DSC per class), then one
    row per metric with its mean and per-class values, then the protocol used.

    Fractions (Dice, IoU, ...) are printed in percent when ``percent``; distances in
    ``distance_unit`` (say ``"voxels"`` when no spacing was given).
    """

    def title(m: str) -> str:
        t = _TITLES[m]
        if not percent:
            t = t.replace(" (%)", "")
        return f"{t} ({distance_unit})" if m in DISTANCE_METRICS else t

    lines: list[str] = []
    head = [m for m in ("dice", "hd95") if m in table.metrics]
    if "dice" in table.metrics:
        cols = ["Model", *[title(m) for m in head], *table.class_names]
        cells = [model, *[_fmt(m, table.mean[m], percent, digits) for m in head]]
        cells += [_fmt("dice", v, percent, digits) for v in table.per_class["dice"]]
        lines += _md_rows(cols, [cells]) + [""]
    cols = ["Metric", "Mean", *table.class_names]
    rows = [
        [title(m), _fmt(m, table.mean[m], percent, digits)]
        + [_fmt(m, v, percent, digits) for v in table.per_class[m]]
        for m in table.metrics
    ]
    lines += _md_rows(cols, rows)
    lines += ["", f"{table.num_cases} case(s); empty-mask protocol: "
              f"{PROTOCOL_NOTES[table.protocol]}."]
    return "\n".join(lines) + "\n"


def _md_rows(cols: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(cols) + " |", "|" + "|".join(["---"] * len(cols)) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def write_case_csv(
    per_case: Mapping[str, CaseResult],
    path: str | Path,
    class_names: Sequence[str] | None = None,
    protocol: str = "strict",
) -> Path:
    """Write one row per case x class: ``case, class_index, class_name, protocol,
    <metric>...`` (values as fractions and in the distance unit). Returns the path."""
    check_protocol(protocol)
    path = Path(path)
    metrics: list[str] = []
    for res in per_case.values():
        for values in res.values():
            metrics = list(values.keys())
            break
        if metrics:
            break
    with _open_for_writing(path) as fh:
        writer = csv.writer(fh)
        writer.writerow(["case", "class_index", "class_name", "protocol", *metrics])
        for case_id, res in per_case.items():
            for c in sorted(res):
                writer.writerow(
                    [case_id, c, _class_name(class_names, c), protocol]
                    + [repr(float(res[c][m])) for m in metrics]
                )
    return path


def write_summary_csv(table: SummaryTable, path: str | Path) -> Path:
    """Write the summary: one row per metric, ``metric, protocol, num_cases, mean,
    <class name>...``. Returns the path."""
    path = Path(path)
    with _open_for_writing(path) as fh:
        writer = csv.writer(fh)
        writer.writerow(["metric", "protocol", "num_cases", "mean", *table.class_names])
        for m in table.metrics:
            writer.writerow(
                [m, table.protocol, table.num_cases, repr(table.mean[m])]
                + [repr(v) for v in table.per_class[m]]
            )
    return path


def _open_for_writing(path: Path):
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return path.open("w", newline="", encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}; choose a writable folder") from exc
