"""Per-case, per-class voxel counts (TP / FP / FN / TN) and every metric, as JSON.

:func:`class_counts` gets the confusion counts of all classes from one joint histogram of
the two label maps (nnU-Net's ``compute_metrics`` counts, with its ``ignore_label``: voxels
whose reference is the ignore label count for nothing). :func:`case_metrics` adds every
metric per class -- Dice, IoU, sensitivity, specificity, HD95, HD, ASSD and NSD -- from
those counts and one surface-distance computation per class, and :func:`summarize_cases`
gives the per-class means over the cases that scored each class plus the mean over
foreground classes, the layout of nnU-Net's ``summary.json``
(``metric_per_case`` / ``mean`` / ``foreground_mean``).

JSON: NaN (a metric undefined for the case, e.g. Dice of a class absent from both maps)
is written as ``null``; an infinite distance (a class present in one map only) as the
string ``"inf"``, so files stay strict JSON and the two cases stay distinguishable.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unetzoo.errors import ConfigError, DataError
from unetzoo.metrics._common import check_label_array, check_protocol, normalize_spacing
from unetzoo.metrics.nsd import check_tolerance, nsd_from_distances
from unetzoo.metrics.overlap import (
    Confusion,
    dice_from_confusion,
    iou_from_confusion,
    sensitivity_from_confusion,
    specificity_from_confusion,
)
from unetzoo.metrics.parallel import class_surface_distances
from unetzoo.metrics.surface import SurfaceDistances

COUNT_KEYS = ("tp", "fp", "fn", "tn", "n_pred", "n_ref")
OVERLAP = {
    "dice": dice_from_confusion,
    "iou": iou_from_confusion,
    "sensitivity": sensitivity_from_confusion,
    "specificity": specificity_from_confusion,
}
DISTANCE = ("hd95", "hd", "assd", "nsd")
CASE_METRICS = tuple(OVERLAP) + DISTANCE


def _labels(arr: object, what: str) -> np.ndarray:
    out = check_label_array(arr, f"{what} label map", allow_float=False)
    if out.dtype == np.bool_:
        out = out.view(np.uint8)
    if out.min() < 0:
        raise DataError(f"{what} label map holds negative values; pass class indices >= 0")
    return out


def class_counts(
    pred: np.ndarray,
    gt: np.ndarray,
    num_classes: int,
    ignore_label: int | None = None,
    roi: np.ndarray | None = None,
) -> dict[int, Confusion]:
    """``{class: Confusion(tp, fp, fn, tn)}`` for classes ``1 .. num_classes - 1``.

    ``ignore_label`` (nnU-Net's ``"ignore"`` entry of dataset.json): voxels where ``gt``
    holds it are left out of every count; so are voxels outside ``roi`` (a boolean mask,
    e.g. DRIVE's field of view) when given. Values outside ``0 .. num_classes - 1`` (other
    than the ignore label in ``gt``) are a one-line DataError.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) \
            or num_classes < 2:
        raise ConfigError(f"num_classes={num_classes!r}; it must be an integer >= 2")
    k = int(num_classes)
    p = _labels(pred, "predicted")
    g = _labels(gt, "ground-truth")
    if p.shape != g.shape:
        raise DataError(
            f"prediction shape {p.shape} differs from ground-truth shape {g.shape}; "
            "resample the prediction to the label grid first"
        )
    keep = _scored(g, ignore_label, roi)
    if keep is not None:
        p, g = p[keep], g[keep]
    for arr, what in ((p, "predicted"), (g, "ground-truth")):
        if arr.size and int(arr.max()) >= k:
            raise DataError(
                f"{what} label map holds class {int(arr.max())}, outside 0..{k - 1}"
                + ("" if ignore_label is None else f" and the ignore label {ignore_label}")
            )
    joint = np.bincount(
        g.ravel().astype(np.intp) * k + p.ravel().astype(np.intp), minlength=k * k
    ).reshape(k, k)  # joint[true class, predicted class]
    total = int(joint.sum())
    out: dict[int, Confusion] = {}
    for c in range(1, k):
        tp = int(joint[c, c])
        fp = int(joint[:, c].sum()) - tp
        fn = int(joint[c, :].sum()) - tp
        out[c] = Confusion(tp, fp, fn, total - tp - fp - fn)
    return out


def _scored(g: np.ndarray, ignore_label: int | None, roi: np.ndarray | None):
    """Boolean mask of the voxels that count (None: all of them)."""
    keep = None if ignore_label is None else np.asarray(g) != ignore_label
    if roi is not None:
        r = np.asarray(roi, dtype=bool)
        if r.shape != np.shape(g):
            raise DataError(f"roi shape {r.shape} differs from label shape {np.shape(g)}")
        keep = r if keep is None else keep & r
    return keep


def case_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    num_classes: int,
    spacing: float | Sequence[float] | None = None,
    *,
    metrics: Sequence[str] = CASE_METRICS,
    class_names: Sequence[str] | None = None,
    protocol: str = "strict",
    ignore_label: int | None = None,
    roi: np.ndarray | None = None,
    nsd_tolerance: float = 1.0,
    connectivity: int = 1,
) -> dict[str, Any]:
    """One case's counts and metrics per foreground class, JSON-ready (see the module
    docstring for NaN / inf).

    Returns ``{"classes": {"1": {"name", "tp", "fp", "fn", "tn", "n_pred", "n_ref",
    <metric>: value ...}, ...}, "spacing": [...] | None, "distance_units": "mm" |
    "voxels", "protocol", "nsd_tolerance"}``. Distances are in the units of ``spacing``
    (mm for real voxel sizes, voxels when None); ``nsd_tolerance`` is in the same units.
    Voxels of the ``ignore_label`` reference or outside ``roi`` count for nothing (they
    are background in both maps for the distances).
    """
    check_protocol(protocol)
    unknown = [m for m in metrics if m not in CASE_METRICS]
    if unknown:
        raise ConfigError(f"unknown metric(s) {unknown}; choose from: {', '.join(CASE_METRICS)}")
    tau = check_tolerance(nsd_tolerance)
    counts = class_counts(pred, gt, num_classes, ignore_label, roi)
    p = np.asarray(pred)
    g = np.asarray(gt)
    keep = _scored(g, ignore_label, roi)
    if keep is not None and any(m in DISTANCE for m in metrics):
        p = np.where(keep, p, 0)
        g = np.where(keep, g, 0)
    sp = None if spacing is None else normalize_spacing(spacing, p.ndim)
    wanted = [m for m in metrics if m in DISTANCE]
    distances = _class_distances(p, g, int(num_classes), sp, connectivity) if wanted else {}
    classes: dict[str, dict[str, Any]] = {}
    for c, conf in counts.items():
        row: dict[str, Any] = {
            "name": class_names[c] if class_names is not None and c < len(class_names)
            else str(c),
            "tp": conf.tp, "fp": conf.fp, "fn": conf.fn, "tn": conf.tn,
            "n_pred": conf.pred_size, "n_ref": conf.gt_size,
        }
        for m in metrics:
            if m in OVERLAP:
                row[m] = OVERLAP[m](conf, protocol)
        if wanted:
            sd = distances[c]
            for m in wanted:
                row[m] = nsd_from_distances(sd, tau) if m == "nsd" else getattr(sd, m)(protocol)
        classes[str(c)] = row
    return {
        "classes": classes,
        "spacing": None if sp is None else [float(s) for s in sp],
        "distance_units": "voxels" if sp is None else "mm",
        "protocol": protocol,
        "nsd_tolerance": tau,
    }


def _class_distances(p: np.ndarray, g: np.ndarray, k: int, sp: np.ndarray | None,
                     connectivity: int) -> dict[int, SurfaceDistances]:
    """Every class's surface distances, the classes in parallel threads (values equal to
    ``surface_distances(p == c, g == c)``; see :mod:`unetzoo.metrics.parallel`)."""
    from unetzoo.metrics.aggregate import _class_boxes

    p, g = (a.view(np.uint8) if a.dtype == np.bool_ else a for a in (p, g))
    boxes_p, boxes_g = _class_boxes(p, k), _class_boxes(g, k)
    found = class_surface_distances(p, g, boxes_p, boxes_g, normalize_spacing(sp, p.ndim),
                                    connectivity)
    empty = np.empty(0, dtype=np.float64)
    return {c: found.get(c) or SurfaceDistances(empty, empty, boxes_p[c - 1] is None,
                                                boxes_g[c - 1] is None)
            for c in range(1, k)}


def _mean(values: list[float]) -> float:
    """Mean over the scored (non-NaN) values; NaN when none scored; inf propagates."""
    vals = [v for v in values if not math.isnan(v)]
    return math.nan if not vals else float(np.mean(vals))


def summarize_cases(per_case: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """nnU-Net-style summary of :func:`case_metrics` results keyed by case id.

    ``mean[class][metric]`` averages the cases that scored the class (NaN left out;
    ``scored`` says how many); counts are summed; ``foreground_mean[metric]`` is the mean
    of the class means.
    """
    mean: dict[str, dict[str, Any]] = {}
    first = next(iter(per_case.values()), None)
    if first is None:
        return {"metric_per_case": {}, "mean": {}, "foreground_mean": {}}
    for c, row in first["classes"].items():
        entry: dict[str, Any] = {"name": row["name"]}
        rows = [case["classes"][c] for case in per_case.values()]
        for key in row:
            if key in COUNT_KEYS:
                entry[key] = int(sum(r[key] for r in rows))
            elif key != "name":
                vals = [float(r[key]) for r in rows]
                entry[key] = _mean(vals)
                entry.setdefault("scored", {})[key] = sum(not math.isnan(v) for v in vals)
        mean[c] = entry
    metric_keys = [k for k in first["classes"][next(iter(first["classes"]))]
                   if k not in COUNT_KEYS and k != "name"] if first["classes"] else []
    fg = {m: _mean([mean[c][m] for c in mean]) for m in metric_keys}
    return {"metric_per_case": dict(per_case), "mean": mean, "foreground_mean": fg}


def jsonable(obj: Any) -> Any:
    """``obj`` with NaN -> None, +-inf -> "inf" / "-inf", numpy scalars -> Python."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        if math.isnan(obj):
            return None
        if math.isinf(obj):
            return "inf" if obj > 0 else "-inf"
    return obj


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as strict JSON (see :func:`jsonable`), atomically."""
    from unetzoo.data.io import atomic_write_text

    p = Path(path)
    atomic_write_text(p, json.dumps(jsonable(obj), indent=2, allow_nan=False) + "\n")
    return p


def read_json_metric(value: Any) -> float:
    """A metric value read back from :func:`write_json` (None -> NaN, "inf" -> inf)."""
    return math.nan if value is None else float(value)
