"""Segmentation metrics: plain functions on numpy masks plus a per-case aggregation layer.

Binary metrics take two masks of one shape (2-D or 3-D, nonzero = foreground; bad input
is a one-line ``DataError``, a ``ValueError``) and a ``protocol`` for empty masks
(``"strict"`` default, nnU-Net / MONAI: undefined values are NaN and left out of the
means; ``"transunet"`` to reproduce TransUNet's tables; see docs/metrics.md):
:func:`dice`, :func:`iou`, :func:`sensitivity`, :func:`specificity`, :func:`auc` (scores against a mask), and the medpy-exact surface metrics :func:`hd95`,
:func:`hd`, :func:`assd` (with ``spacing``). :func:`surface_distances` computes the
distances once for all three. :func:`score_case` ``(pred, case, rules)`` is the one
per-case evaluation (a :class:`Reference` with the case's own geometry, the
:class:`ScoringRules` of the evaluation; a :class:`CaseScore` back) and
:func:`summarize` builds the per-class tables from per-case results.
"""

from unetzoo.metrics._common import PROTOCOLS, scored_mean
from unetzoo.metrics.aggregate import (
    PROTOCOL_NOTES,
    SummaryTable,
    format_table,
    never_predicted_warning,
    present_classes,
    summarize,
    write_case_csv,
    write_summary_csv,
)
from unetzoo.metrics.case import (
    METRICS,
    CaseScore,
    ClassScore,
    Reference,
    ScoringRules,
    score_case,
    spacing_known,
)
from unetzoo.metrics.nsd import nsd
from unetzoo.metrics.overlap import Confusion, auc, confusion, dice, iou, sensitivity, specificity
from unetzoo.metrics.surface import SurfaceDistances, assd, hd, hd95, surface_distances

__all__ = [
    "METRICS",
    "PROTOCOLS",
    "PROTOCOL_NOTES",
    "CaseScore",
    "ClassScore",
    "Confusion",
    "SummaryTable",
    "SurfaceDistances",
    "assd",
    "auc",
    "confusion",
    "dice",
    "format_table",
    "hd",
    "hd95",
    "iou",
    "nsd",
    "sensitivity",
    "specificity",
    "never_predicted_warning",
    "present_classes",
    "Reference",
    "score_case",
    "ScoringRules",
    "scored_mean",
    "summarize",
    "spacing_known",
    "surface_distances",
    "write_case_csv",
    "write_summary_csv",
]
