"""Per-case records as JSON: nnU-Net's ``summary.json`` layout and strict JSON files.

A case's record (counts and every metric per class) is
:meth:`unetzoo.metrics.CaseScore.record` of the one per-case evaluation,
:func:`unetzoo.metrics.score_case`; :func:`summarize_cases` gives the per-class means
over the cases that scored each class plus the mean over foreground classes, the layout
of nnU-Net's ``summary.json`` (``metric_per_case`` / ``mean`` / ``foreground_mean``).

JSON: NaN (a metric undefined for the case, e.g. Dice of a class absent from both maps)
is written as ``null``; an infinite distance (a class present in one map only) as the
string ``"inf"``, so files stay strict JSON and the two cases stay distinguishable.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from unetzoo.metrics._common import scored_mean

COUNT_KEYS = ("tp", "fp", "fn", "tn", "n_pred", "n_ref")


def summarize_cases(per_case: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """nnU-Net-style summary of per-case records (:meth:`unetzoo.metrics.CaseScore.record`)
    keyed by case id.

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
