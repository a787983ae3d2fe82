"""Per-case, per-class voxel counts (TP / FP / FN / TN) and every metric, as JSON.

:func:`class_counts` gives the confusion counts of all classes (nnU-Net's
``compute_metrics`` counts, with its ``ignore_label``: voxels whose reference is the
ignore label count for nothing). :func:`case_metrics` adds every metric per class --
Dice, IoU, sensitivity, specificity, HD95, HD, ASSD and NSD. Both are projections of the
one per-case evaluation, :func:`unetzoo.metrics.case.score_case`; :func:`summarize_cases`
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

from unetzoo.errors import ConfigError
from unetzoo.metrics._common import check_protocol, normalize_spacing, scored_mean
from unetzoo.metrics.case import OVERLAP_METRICS, ClassScore, score_case
from unetzoo.metrics.nsd import check_tolerance
from unetzoo.metrics.overlap import Confusion

COUNT_KEYS = ("tp", "fp", "fn", "tn", "n_pred", "n_ref")
DISTANCE = ("hd95", "hd", "assd", "nsd")
CASE_METRICS = OVERLAP_METRICS + DISTANCE


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
    scores = score_case(pred, gt, num_classes, metrics=(), roi=roi, ignore_label=ignore_label)
    return {c: s.confusion for c, s in scores.items()}


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
    docstring for NaN / inf): :func:`case_record` of :func:`unetzoo.metrics.score_case`.

    Distances are in the units of ``spacing`` (mm for real voxel sizes, voxels when
    None); ``nsd_tolerance`` is in the same units. Voxels of the ``ignore_label``
    reference or outside ``roi`` count for nothing (they are background in both maps for
    the distances).
    """
    metrics = check_case_metrics(metrics)
    tau = check_tolerance(nsd_tolerance)
    scores = score_case(pred, gt, num_classes, spacing, protocol, metrics, roi,
                        ignore_label=ignore_label, connectivity=connectivity,
                        nsd_tolerance=tau)
    sp = None if spacing is None else normalize_spacing(spacing, np.ndim(pred))
    return case_record(scores, class_names, sp, protocol, tau, metrics)


def check_case_metrics(metrics: Sequence[str]) -> tuple[str, ...]:
    """The metrics a per-case record may hold (no AUC: it needs probabilities)."""
    unknown = [m for m in metrics if m not in CASE_METRICS]
    if unknown:
        raise ConfigError(f"unknown metric(s) {unknown}; choose from: {', '.join(CASE_METRICS)}")
    return tuple(metrics)


def case_record(
    scores: Mapping[int, ClassScore],
    class_names: Sequence[str] | None,
    spacing: Sequence[float] | None,
    protocol: str,
    nsd_tolerance: float,
    metrics: Sequence[str] = CASE_METRICS,
) -> dict[str, Any]:
    """The per-case JSON record of :func:`unetzoo.metrics.score_case` results.

    Returns ``{"classes": {"1": {"name", "tp", "fp", "fn", "tn", "n_pred", "n_ref",
    <metric>: value ...}, ...}, "spacing": [...] | None, "distance_units": "mm" |
    "voxels", "protocol", "nsd_tolerance"}`` with the ``metrics`` the scores hold.
    """
    check_protocol(protocol)
    classes: dict[str, dict[str, Any]] = {}
    for c, score in scores.items():
        conf = score.confusion
        classes[str(c)] = {
            "name": class_names[c] if class_names is not None and c < len(class_names)
            else str(c),
            "tp": conf.tp, "fp": conf.fp, "fn": conf.fn, "tn": conf.tn,
            "n_pred": conf.pred_size, "n_ref": conf.gt_size,
            **{m: score.values[m] for m in metrics if m in score.values},
        }
    return {
        "classes": classes,
        "spacing": None if spacing is None else [float(s) for s in spacing],
        "distance_units": "voxels" if spacing is None else "mm",
        "protocol": protocol,
        "nsd_tolerance": float(nsd_tolerance),
    }


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
                entry[key], entry.setdefault("scored", {})[key] = scored_mean(
                    [r[key] for r in rows])
        mean[c] = entry
    metric_keys = [k for k in first["classes"][next(iter(first["classes"]))]
                   if k not in COUNT_KEYS and k != "name"] if first["classes"] else []
    fg = {m: scored_mean([mean[c][m] for c in mean])[0] for m in metric_keys}
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
