"""The per-class mean table of the papers, over per-case results.

:func:`unetzoo.metrics.score_case` (:mod:`unetzoo.metrics.case`) gives one case's
``{class_index: {metric: value}}`` (``CaseScore.by_class()``); ``summarize`` averages many cases into a :class:`SummaryTable` (per-class means over the
cases that scored the class, how many did, and the mean over classes, as in
TransUNet-style tables); ``format_table`` and the CSV writers turn it into files. Every
table records the empty-mask protocol used and names the classes that the model never
predicted, so a model that segments nothing can never look half right.
"""

from __future__ import annotations

import contextlib
import csv
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unetzoo.errors import ConfigError, DataError
from unetzoo.metrics._common import check_protocol, scored_mean
from unetzoo.metrics.case import DISTANCE_METRICS, as_labels

# Column titles used by the tables; fractions are shown in percent.
_TITLES = {
    "dice": "DSC (%)",
    "iou": "IoU (%)",
    "sensitivity": "Sensitivity (%)",
    "specificity": "Specificity (%)",
    "auc": "AUC (%)",
    "nsd": "NSD (%)",
    "hd95": "HD95",
    "hd": "HD",
    "assd": "ASSD",
}

PROTOCOL_NOTES = {
    "strict": "strict (nnU-Net / MONAI: a class absent from both prediction and reference "
    "is not scored (NaN) and left out of the means; absent from one only: Dice 0, "
    "distances inf)",
    "transunet": "transunet (TransUNet calculate_metric_percase: prediction present and "
    "ground truth empty: Dice 1, HD95 0; prediction empty: Dice 0, HD95 0; every case "
    "counts)",
}

CaseResult = dict[int, dict[str, float]]


def present_classes(
    labels: np.ndarray, num_classes: int, roi: np.ndarray | None = None
) -> set[int]:
    """The foreground classes ``1 .. num_classes - 1`` that occur in ``labels`` (inside
    ``roi`` when given): feed the predicted ones to :func:`summarize` as ``predicted``."""
    arr = as_labels(labels, "predicted", num_classes)
    if roi is not None:
        arr = arr[np.asarray(roi, dtype=bool)]
    counts = np.bincount(arr.ravel().astype(np.intp, copy=False), minlength=num_classes)
    return {c for c in range(1, num_classes) if counts[c] > 0}


@dataclass
class SummaryTable:
    """Per-class means over the scored cases and their mean over classes.

    ``per_class[metric][i]`` is the mean over the cases that scored class
    ``class_indices[i]`` (named ``class_names[i]``); ``counts[metric][i]`` is how many
    cases did (a case whose value is NaN, e.g. the class absent from both prediction and
    reference under ``"strict"``, is not scored); a class with no scored case has a NaN
    mean. ``mean[metric]`` is the mean of the per-class means over the classes with at
    least one scored case (the "mean DSC" / "mean HD95" of the papers); NaN if none.
    ``never_predicted`` lists the class indices that the prediction holds in no case
    (empty when unknown: ``summarize`` was not told which classes were predicted).
    """

    metrics: list[str]
    class_indices: list[int]
    class_names: list[str]
    per_class: dict[str, list[float]]
    mean: dict[str, float]
    num_cases: int
    protocol: str
    counts: dict[str, list[int]] = field(default_factory=dict)
    never_predicted: list[int] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)

    def classes_in_mean(self, metric: str) -> int:
        """How many classes the mean over classes of ``metric`` averages."""
        return sum(1 for n in self.counts.get(metric, []) if n > 0)

    @property
    def never_predicted_names(self) -> list[str]:
        return [self.class_names[self.class_indices.index(c)] for c in self.never_predicted]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of the table (NaN and inf stay floats: Python's json writes
        them as ``NaN`` / ``Infinity``)."""
        return {
            "protocol": self.protocol,
            "num_cases": self.num_cases,
            "metrics": list(self.metrics),
            "classes": [
                {
                    "index": i,
                    "name": n,
                    **{m: self.per_class[m][k] for m in self.metrics},
                    **{f"n_{m}": self.counts[m][k] for m in self.metrics},
                }
                for k, (i, n) in enumerate(zip(self.class_indices, self.class_names))
            ],
            "mean": dict(self.mean),
            "classes_in_mean": {m: self.classes_in_mean(m) for m in self.metrics},
            "never_predicted": self.never_predicted_names,
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
    *,
    predicted: Iterable[int] | None = None,
) -> SummaryTable:
    """Average ``{case_id: score_case(...).by_class()}`` into the papers' table.

    Args:
        per_case: per-case results; every case must hold the same classes and metrics.
        class_names: names indexed by class (index 0 = background, as
            ``SegDataset.class_names``); missing names become ``"class <i>"``.
        protocol: the protocol the results were computed with (recorded in the table).
        predicted: the classes the prediction holds in at least one case (the union of
            :func:`present_classes` over the cases); the others are listed in
            ``never_predicted``. None: not checked.

    Per class, NaN values (not scored) are left out of the mean over cases (nnU-Net's
    ``nanmean``); the mean over classes averages the classes with at least one scored
    case. ``inf`` distances are kept, so a class missed in one case has an infinite mean.
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
    per_class: dict[str, list[float]] = {}
    counts: dict[str, list[int]] = {}
    for m in metrics:
        pairs = [scored_mean([res[c][m] for res in per_case.values()]) for c in classes]
        per_class[m] = [p[0] for p in pairs]
        counts[m] = [p[1] for p in pairs]
    mean = {m: scored_mean(per_class[m])[0] for m in metrics}
    seen = None if predicted is None else {int(c) for c in predicted}
    return SummaryTable(
        metrics=metrics,
        class_indices=classes,
        class_names=[_class_name(class_names, c) for c in classes],
        per_class=per_class,
        mean=mean,
        num_cases=len(per_case),
        protocol=protocol,
        counts=counts,
        never_predicted=[] if seen is None else [c for c in classes if c not in seen],
    )


def _fmt(metric: str, value: float, percent: bool, digits: int) -> str:
    if math.isnan(value):
        return "n/a"
    if metric not in DISTANCE_METRICS and percent:
        value = 100.0 * value
    return f"{value:.{digits}f}"


def never_predicted_warning(table: SummaryTable) -> str | None:
    """The warning line for classes the model never predicted, or None."""
    if not table.never_predicted:
        return None
    names = ", ".join(table.never_predicted_names)
    return (
        f"warning: the model never predicted {len(table.never_predicted)} of "
        f"{len(table.class_indices)} class(es) in any of the {table.num_cases} case(s): "
        f"{names}"
    )


def format_table(
    table: SummaryTable,
    model: str = "unetzoo",
    *,
    percent: bool = True,
    digits: int = 2,
    distance_unit: str = "mm",
) -> str:
    """Markdown: the papers' line (model, mean DSC, mean HD95, DSC per class), then one
    row per class with each metric's mean and its number of scored cases ``n``, then the
    rules used and the never-predicted warning.

    Fractions (Dice, IoU, ...) are printed in percent when ``percent``; distances in
    ``distance_unit`` (``"vox"`` when the voxel spacing is unknown). A class with no
    scored case shows ``n/a``.
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
    cols = ["Class"]
    for m in table.metrics:
        cols += [title(m), "n"]
    rows = []
    for k, name in enumerate(table.class_names):
        flag = " (never predicted)" if table.class_indices[k] in table.never_predicted else ""
        row = [name + flag]
        for m in table.metrics:
            row += [_fmt(m, table.per_class[m][k], percent, digits), str(table.counts[m][k])]
        rows.append(row)
    mean_row = ["**Mean**"]
    for m in table.metrics:
        mean_row += [_fmt(m, table.mean[m], percent, digits),
                     f"{table.classes_in_mean(m)}/{len(table.class_indices)} classes"]
    lines += _md_rows(cols, rows + [mean_row])
    lines += [
        "",
        f"{table.num_cases} case(s); empty-mask protocol: "
        f"{PROTOCOL_NOTES[table.protocol]}.",
        "n = cases scored for the class. Per class: mean over its scored cases; Mean: "
        "mean of the per-class means over the classes with at least one scored case.",
    ]
    warning = never_predicted_warning(table)
    if warning:
        lines += ["", f"**{warning[0].upper()}{warning[1:]}**"]
    return "\n".join(lines) + "\n"


def _md_rows(cols: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(cols) + " |", "|" + "|".join(["---"] * len(cols)) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def write_case_csv(
    per_case: Mapping[str, CaseResult],
    path: str | Path,
    class_names: Sequence[str] | None = None,
    protocol: str | None = "strict",
    *,
    digits: int | None = None,
) -> Path:
    """Write one row per case x class: ``case, class_index, class_name, protocol,
    <metric>...`` (values as fractions and in the distance unit). Returns the path.

    ``protocol=None`` leaves the protocol column out (the test report's ``cases.csv``
    records it in summary.json); ``digits`` rounds the values (``nan`` / ``inf`` stay
    words), None writes them exactly (``repr``).
    """
    if protocol is not None:
        check_protocol(protocol)
    path = Path(path)
    metrics: list[str] = []
    for res in per_case.values():
        for values in res.values():
            metrics = list(values.keys())
            break
        if metrics:
            break

    def cell(v: float) -> str:
        return repr(float(v)) if digits is None else f"{float(v):.{digits}f}"

    with _open_for_writing(path) as fh:
        writer = csv.writer(fh)
        extra = [] if protocol is None else ["protocol"]
        writer.writerow(["case", "class_index", "class_name", *extra, *metrics])
        for case_id, res in per_case.items():
            for c in sorted(res):
                writer.writerow(
                    [case_id, c, _class_name(class_names, c)]
                    + ([] if protocol is None else [protocol])
                    + [cell(res[c][m]) for m in metrics]
                )
    return path


def write_summary_csv(table: SummaryTable, path: str | Path) -> Path:
    """Write the summary: per metric one row of means, ``metric, protocol, num_cases,
    mean, <class name>...``, then one row ``n_<metric>`` with the number of scored cases
    per class (its ``mean`` cell: the number of classes in the mean). Returns the path."""
    path = Path(path)
    with _open_for_writing(path) as fh:
        writer = csv.writer(fh)
        writer.writerow(["metric", "protocol", "num_cases", "mean", *table.class_names])
        for m in table.metrics:
            writer.writerow(
                [m, table.protocol, table.num_cases, repr(table.mean[m])]
                + [repr(v) for v in table.per_class[m]]
            )
            writer.writerow(
                [f"n_{m}", table.protocol, table.num_cases, table.classes_in_mean(m)]
                + list(table.counts[m])
            )
    return path


@contextlib.contextmanager
def _open_for_writing(path: Path):
    """A text handle on a temporary file renamed onto ``path`` when the block ends
    (:func:`unetzoo.data.io.atomic_path`: never a half-written CSV under its name)."""
    from unetzoo.data.io import atomic_path

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
            yield fh
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}; choose a writable folder") from exc
