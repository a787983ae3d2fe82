"""``unetzoo test``: volume inference on a test split, per-case metrics and the report.

The report folder holds ``summary.md`` (the mean table laid out as in the papers: mean
DSC, mean HD95, one Dice column per class; then per class each mean with ``n``, the
number of cases that scored it), ``summary.json`` (strict JSON: a mean with no scored
case is ``null``, an infinite distance ``"inf"``), ``cases.csv`` (every case x class),
``overlays/*.png`` and, on request, ``predictions/*.nii.gz``.

Empty classes (docs/metrics.md): under ``protocol="strict"`` (nnU-Net / MONAI) a class
absent from both prediction and reference in a case is NaN there and left out of the
means; the mean over classes averages the classes with at least one scored case. A class
that the model predicts in no test case is flagged in ``summary.md`` and on the console.

HD95 units: under ``"strict"`` HD95 is in millimetres when the case's voxel spacing is
known (NIfTI sources: the case carries an affine, or the reader sets
``case.spacing_known``) and in voxels otherwise (Synapse h5/npz, PNG folders); under
``"transunet"`` it is always in voxels, as the TransUNet test script computes it
(``medpy hd95`` without spacing), so the numbers compare with the tables.
"""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unetzoo.data.io import save_case_nifti
from unetzoo.engine.checkpoint import load_checkpoint, model_from_checkpoint
from unetzoo.engine.inference import predict_volume
from unetzoo.engine.logging.display import display_window
from unetzoo.engine.logging.plots import overlay_png, pick_slices
from unetzoo.errors import CheckpointError, ConfigError, DataError

#: Metrics ``unetzoo test --metrics`` may put in the report (AUC needs probabilities).
REPORT_METRICS = ("dice", "iou", "sensitivity", "specificity", "hd95", "hd", "assd", "nsd")
DEFAULT_REPORT_METRICS = ("dice", "hd95")


def check_report_metrics(metrics: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """``"dice,hd95,nsd"`` (or a sequence) as a tuple of known report metrics, in the
    given order without repeats; an unknown or empty list is a one-line ConfigError."""
    names = metrics.split(",") if isinstance(metrics, str) else list(metrics)
    names = [str(n).strip().lower() for n in names if str(n).strip()]
    unknown = [n for n in names if n not in REPORT_METRICS]
    if unknown or not names:
        raise ConfigError(
            f"unknown metric(s) {', '.join(unknown) or '(none given)'} for --metrics; "
            f"choose a comma list from: {', '.join(REPORT_METRICS)}"
        )
    return tuple(dict.fromkeys(names))


def spacing_known(case) -> bool:
    """Whether ``case.spacing`` holds real voxel sizes (not the 1.0 placeholder).

    A reader may say so with a ``spacing_known`` attribute; otherwise a case with an
    affine (the NIfTI readers) has a known spacing and one without (Synapse h5/npz, 2-D
    image folders) has none.
    """
    known = getattr(case, "spacing_known", None)
    if known is None:
        known = getattr(case, "affine", None) is not None
    return bool(known)


def hd95_unit(case, protocol: str = "strict") -> str:
    """``"mm"`` when HD95 of ``case`` is computed with its voxel spacing, else ``"voxels"``."""
    return "mm" if protocol == "strict" and spacing_known(case) else "voxels"


def scored_region(case) -> np.ndarray | None:
    """Boolean mask of the voxels that are scored: ``case.roi`` without the voxels whose
    reference is ``case.ignore_label``; None when every voxel counts."""
    roi = case.roi
    ignore = getattr(case, "ignore_label", None)
    if ignore is None or case.label is None:
        return roi
    keep = np.asarray(case.label) != ignore
    return keep if roi is None else keep & np.asarray(roi, dtype=bool)


def case_metrics(
    pred: np.ndarray,
    case,
    num_classes: int,
    protocol: str = "strict",
    metrics: tuple[str, ...] = DEFAULT_REPORT_METRICS,
    nsd_tolerance: float = 1.0,
) -> dict[int, dict[str, float]]:
    """The ``metrics`` (default Dice and HD95) per foreground class of one case:
    ``{class_index: {metric: value}}``. NSD's ``nsd_tolerance`` is in the HD95 unit.

    Pixels outside ``case.roi`` (e.g. the DRIVE field of view) are ignored when present,
    and so are pixels whose reference is ``case.ignore_label`` (nnU-Net's ignore label:
    removed from prediction and reference before scoring, as nnU-Net's evaluator).
    HD95 is in mm when the spacing is known under ``"strict"`` (see :func:`hd95_unit`),
    else in voxels. Under ``"strict"`` a class absent from both maps is NaN.
    """
    from unetzoo.metrics import evaluate_case

    use_mm = hd95_unit(case, protocol) == "mm"
    spacing = tuple(float(s) for s in case.spacing) if use_mm else None
    gt, roi = case.label, scored_region(case)
    if getattr(case, "ignore_label", None) is not None:
        gt = np.where(roi, gt, 0)
    result = evaluate_case(
        pred, gt, num_classes, spacing=spacing, protocol=protocol,
        metrics=tuple(metrics), roi=roi, nsd_tolerance=nsd_tolerance,
    )
    return {int(k): {m: float(v) for m, v in vals.items()} for k, vals in result.items() if int(k) != 0}


def summary_table(
    rows: list[dict[str, Any]],
    class_names: list[str],
    protocol: str = "strict",
    predicted: set[int] | None = None,
    metrics: tuple[str, ...] = DEFAULT_REPORT_METRICS,
):
    """The :class:`unetzoo.metrics.SummaryTable` of per-case rows (``case``,
    ``class_index`` and each of ``metrics``): the one aggregation the report, the
    validation during training and the benchmarks share."""
    from unetzoo.metrics import summarize

    per_case: dict[str, dict[int, dict[str, float]]] = {}
    for r in rows:
        per_case.setdefault(str(r["case"]), {})[int(r["class_index"])] = {
            m: float(r[m]) for m in metrics
        }
    return summarize(per_case, class_names, protocol, predicted=predicted)


def mean_table(
    rows: list[dict[str, Any]],
    class_names: list[str],
    protocol: str = "strict",
    *,
    predicted: set[int] | None = None,
    model_name: str = "unetzoo",
    hd_unit: str = "mm",
    metrics: tuple[str, ...] = DEFAULT_REPORT_METRICS,
) -> tuple[dict[str, Any], str]:
    """Per-class means over the scored cases, then the mean over classes (TransUNet's
    order; under ``"strict"`` NaN cells are not scored and left out).

    Args:
        rows: one dict per case x class with ``case``, ``class_index`` and each metric.
        predicted: classes the model predicted in at least one case (None: unchecked).
        metrics: the report's metrics (default Dice and HD95; e.g. add ``"nsd"``).

    Returns:
        ``(summary, markdown)``: ``summary`` is ``{"mean_<metric>"..., "per_class":
        {name: {<metric>..., "n_<metric>"..., "predicted"}}, "cases",
        "classes_in_mean", "never_predicted": [names], "warning"}``; ``markdown`` the
        table of :func:`unetzoo.metrics.format_table`.
    """
    from unetzoo.metrics import format_table, never_predicted_warning

    if not rows:
        raise DataError("no test case was evaluated; nothing to summarize")
    metrics = tuple(metrics)
    table = summary_table(rows, class_names, protocol, predicted, metrics)
    per_class = {
        name: {
            **{m: table.per_class[m][k] for m in metrics},
            **{f"n_{m}": table.counts[m][k] for m in metrics},
            "predicted": None if predicted is None else c in predicted,
        }
        for k, (c, name) in enumerate(zip(table.class_indices, table.class_names))
    }
    summary = {
        **{f"mean_{m}": table.mean[m] for m in metrics},
        "per_class": per_class,
        "cases": table.num_cases,
        "classes_in_mean": {m: table.classes_in_mean(m) for m in metrics},
        "never_predicted": table.never_predicted_names,
        "warning": never_predicted_warning(table),
    }
    return summary, format_table(table, model_name, distance_unit=hd_unit)


@torch.no_grad()
def validate(
    model: torch.nn.Module, ds, split: str, cases: list[str], cfg: dict[str, Any], device,
    collect: dict[str, Any] | None = None,
) -> dict[str, float]:
    """Mean foreground Dice and HD95 over ``cases`` (volume inference, TransUNet resize),
    as the trainer's validation step.

    The same per-case function (:func:`case_metrics`) and aggregation
    (:func:`summary_table`) as the test report: per class the mean over the cases that
    scored it, then the mean over the classes with at least one scored case. Under
    ``"strict"`` a class absent from both prediction and reference is not scored (it
    never counts as a success) and a missed class scores Dice 0; ``val_dice`` is NaN
    when no class was scored at all, which never beats a best model.

    ``collect`` (for TensorBoard), when given, receives ``"per_class_dice"`` ``{class
    name: mean Dice}`` and ``"samples"``, one :class:`~unetzoo.engine.logging.tensorboard.
    ValidationSample` for each of the first ``IMAGES_PER_VALIDATION`` cases.
    """
    from unetzoo.engine.logging.tensorboard import IMAGES_PER_VALIDATION, pick_sample

    model = getattr(model, "module", model)  # DistributedDataParallel wraps the model
    was_training = model.training
    model.eval()
    rows: list[dict[str, Any]] = []
    try:
        for cid in cases:
            case = ds.load_case(cid, split)
            pred = predict_volume(
                model, case.image, int(cfg["img_size"]), batch_size=int(cfg["batch_size"]),
                device=device, amp=bool(cfg["amp"]),
            )
            per_class = case_metrics(pred, case, ds.num_classes, cfg["protocol"])
            rows += [{"case": cid, "class_index": k, **m} for k, m in per_class.items()]
            if collect is not None and len(collect.setdefault("samples", [])) < IMAGES_PER_VALIDATION:
                collect["samples"].append(pick_sample(case, pred))
    finally:
        model.train(was_training)
    table = summary_table(rows, list(ds.class_names), cfg["protocol"])
    if collect is not None:
        collect["per_class_dice"] = {
            name: float(table.per_class["dice"][k]) for k, name in enumerate(table.class_names)
        }
    return {"val_dice": float(table.mean["dice"]), "val_hd95": float(table.mean["hd95"])}


def run_test(
    checkpoint: str | Path | dict | list[str | Path],
    dataset=None,
    data_root: str | Path | None = None,
    split: str = "test",
    max_cases: int | None = None,
    out_dir: str | Path | None = None,
    save_predictions: bool = False,
    tta: bool = False,
    protocol: str = "strict",
    overlays: int = 3,
    device: str | torch.device | None = None,
    batch_size: int = 16,
    verbose: bool = True,
    backend: str = "torch",
    postprocessing: dict[str, Any] | str | None = "stored",
    case_json: bool = False,
    nsd_tolerance: float = 1.0,
    metrics: str | tuple[str, ...] = DEFAULT_REPORT_METRICS,
) -> dict[str, Any]:
    """Evaluate a checkpoint on a test split and write the report folder.

    Args:
        checkpoint: a path (or an already loaded checkpoint dict), or a list of paths:
            an ensemble that averages the members' softmax (e.g. the folds of a
            cross-validation; :mod:`unetzoo.engine.ensemble`).
        dataset: a ``SegDataset``, a dataset name, or None (the checkpoint's dataset).
        data_root: root folder when ``dataset`` is a name.
        max_cases: evaluate only the first N test cases.
        out_dir: report folder (default: ``<run>/report`` next to ``checkpoints/``).
        save_predictions: also write NIfTI label maps with the input file's shape, voxel
            order and affine (:func:`unetzoo.data.io.save_case_nifti`).
        tta: flip test-time augmentation.
        protocol: empty-mask protocol, ``"strict"`` or ``"transunet"``.
        overlays: overlay PNG slices per case (0 disables).
        backend: ``"torch"``, ``"onnxruntime"`` or ``"auto"``, the forward pass on CPU
            (:mod:`unetzoo.engine.backends`; the ONNX export is cached beside the
            checkpoint file).
        postprocessing: ``"stored"`` applies the plan stored with the (first) checkpoint
            when there is one (``unetzoo postprocess``), a plan dict that plan, None none
            (:mod:`unetzoo.engine.postprocess`).
        case_json: also write ``cases.json``: per case and class TP / FP / FN / TN and
            every metric (Dice, IoU, sensitivity, specificity, HD95, HD, ASSD, NSD at
            ``nsd_tolerance`` in the HD95 unit), nnU-Net's summary layout
            (:mod:`unetzoo.metrics.per_case`).
        nsd_tolerance: NSD's tolerance in the HD95 unit (mm, or voxels).
        metrics: the report's metrics, a tuple or a comma list (default Dice and HD95;
            ``"dice,hd95,nsd"`` adds NSD columns to summary.md, summary.json, cases.csv).

    Returns:
        The summary (see :func:`mean_table`) plus ``"report_dir"`` and ``"protocol"``.
    """
    from unetzoo.data import get_dataset
    from unetzoo.engine.backends import check_backend, make_backend
    from unetzoo.metrics import present_classes
    from unetzoo.metrics.per_case import write_json

    check_backend(backend)  # a bad name is one line before any work
    from unetzoo.metrics.nsd import check_tolerance

    metrics = check_report_metrics(metrics)
    if "nsd" in metrics:
        check_tolerance(nsd_tolerance)
    members = None
    if isinstance(checkpoint, (list, tuple)):
        members = [str(p) for p in checkpoint]
        checkpoint = members[0]
    ckpt_path = None if isinstance(checkpoint, dict) else Path(checkpoint)
    ckpt = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
    if dataset is None or isinstance(dataset, str):
        name = dataset or ckpt.get("dataset")
        options: dict[str, Any] = {}
        train_cfg = ckpt.get("config") or {}
        if name == ckpt.get("dataset"):
            # The data it was trained on: same reader options (and root unless given).
            options = dict(train_cfg.get("dataset_options") or {})
            data_root = data_root if data_root is not None else train_cfg.get("data_root")
        dataset = get_dataset(name, data_root, **options)
    ds = dataset
    n_ckpt = len(ckpt["class_names"])
    if ds.num_classes != n_ckpt:
        raise CheckpointError(
            f"checkpoint predicts {n_ckpt} classes but dataset {ds.name!r} has "
            f"{ds.num_classes}; test it on the data it was trained for"
        )
    if int(ckpt["in_channels"]) != int(ds.in_channels):
        raise CheckpointError(
            f"checkpoint takes {ckpt['in_channels']} input channel(s) but dataset "
            f"{ds.name!r} has {ds.in_channels}"
        )
    if split not in ds.splits() or not ds.cases(split):
        raise DataError(f"dataset {ds.name!r} at {ds.root} has no {split!r} cases to test on")
    cases = list(ds.cases(split))
    if max_cases:
        cases = cases[: int(max_cases)]

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if members is not None and len(members) > 1:
        from unetzoo.engine.ensemble import load_ensemble

        model, _ = load_ensemble(members, device, wrap=lambda m, path, ck: make_backend(
            m, backend, checkpoint=path, ckpt=ck, device=device, verbose=verbose))
    else:
        model = model_from_checkpoint(ckpt, device=device)
        model = make_backend(model, backend, checkpoint=ckpt_path, ckpt=ckpt, device=device,
                             verbose=verbose)
    from unetzoo.engine.postprocess import apply_postprocessing, check_plan, plan_for_checkpoint

    plan = (plan_for_checkpoint(ckpt, ckpt_path) if postprocessing == "stored"
            else None if postprocessing is None else check_plan(postprocessing))
    img_size = int(ckpt["img_size"])
    if out_dir is None:
        base = ckpt_path.parent if ckpt_path is not None else Path(".")
        out_dir = (base.parent if base.name == "checkpoints" else base) / "report"
    out = Path(out_dir)
    from unetzoo.engine.run_folder import check_output_dir

    check_output_dir(out)
    if overlays:
        (out / "overlays").mkdir(exist_ok=True)
    if save_predictions:
        (out / "predictions").mkdir(exist_ok=True)

    class_names = list(ckpt["class_names"])
    rows: list[dict[str, Any]] = []
    per_case_json: dict[str, Any] = {}
    predicted: set[int] = set()
    units: set[str] = set()
    t0 = time.time()
    for i, cid in enumerate(cases):
        case = ds.load_case(cid, split)
        if case.label is None:
            raise DataError(f"test case {cid!r} of {ds.name!r} has no label; use `unetzoo predict`")
        pred = predict_volume(model, case.image, img_size, batch_size=batch_size, tta=tta, device=device)
        if plan is not None:
            pred = apply_postprocessing(pred, plan)
        if case_json:
            from unetzoo.metrics.per_case import case_metrics as all_metrics

            per_case_json[cid] = all_metrics(
                pred, case.label, ds.num_classes,
                case.spacing if hd95_unit(case, protocol) == "mm" else None,
                class_names=class_names, protocol=protocol, roi=case.roi,
                ignore_label=getattr(case, "ignore_label", None), nsd_tolerance=nsd_tolerance,
            )
        for k, vals in case_metrics(pred, case, ds.num_classes, protocol, metrics,
                                    nsd_tolerance).items():
            rows.append({"case": cid, "class_index": k, "class_name": class_names[k], **vals})
        predicted |= present_classes(pred, ds.num_classes, scored_region(case))
        units.add(hd95_unit(case, protocol))
        if save_predictions:
            # The input file's shape, voxel order and affine (Case.axes undoes the reader's
            # slicing order), as `predict` writes; no affine: a diagonal one of the spacing.
            affine = case.affine if case.affine is not None else np.diag([*map(float, case.spacing), 1.0])
            save_case_nifti(pred, affine, out / "predictions" / f"{_safe(cid)}.nii.gz",
                            getattr(case, "axes", None))
        if overlays:
            # Radiological orientation from the affine, one window for the whole volume.
            window = display_window(case.image[0])
            for z in pick_slices(case.label, overlays,
                                 ignore_label=getattr(case, "ignore_label", None)):
                overlay_png(
                    out / "overlays" / f"{_safe(cid)}_slice{z:03d}.png",
                    case.image[0, z], pred[z], class_names, gt=case.label[z],
                    title=f"{cid}, slice {z}", affine=case.affine, window=window,
                    ignore_label=getattr(case, "ignore_label", None),
                )
        if verbose and "dice" in metrics:
            scored = [r["dice"] for r in rows if r["case"] == cid and not np.isnan(r["dice"])]
            dice = f"{np.mean(scored):.4f}" if scored else "n/a (no class present)"
            print(f"[{i + 1}/{len(cases)}] {cid}: mean Dice {dice} over {len(scored)} "
                  "scored class(es)", flush=True)

    hd_unit = units.pop() if len(units) == 1 else "mm or voxels (mixed spacing)"
    model_name = ckpt["model"]["name"]
    summary, table = mean_table(rows, class_names, protocol, predicted=predicted,
                                model_name=model_name, hd_unit=hd_unit, metrics=metrics)
    title = getattr(ds, "title", None) or ds.name  # dataset.json's "name" when it has one
    if "nsd" in metrics:
        table += f"\nNSD: normalized surface Dice at tolerance {nsd_tolerance:g} ({hd_unit}).\n"
    (out / "summary.md").write_text(f"# Test of {model_name} on {title} ({split})\n\n" + table)
    with (out / "cases.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["case", "class_index", "class_name", *metrics])
        writer.writeheader()
        for r in rows:
            writer.writerow({**r, **{m: f"{r[m]:.6f}" for m in metrics}})
    summary.update(
        {
            "model": model_name,
            "dataset": ds.name,
            "split": split,
            "protocol": protocol,
            "hd95_unit": hd_unit,
            "metrics": list(metrics),
            **({"nsd_tolerance": float(nsd_tolerance)} if "nsd" in metrics else {}),
            "tta": bool(tta),
            "seconds": round(time.time() - t0, 2),
            "report_dir": str(out),
            "checkpoints": members or [str(ckpt_path) if ckpt_path else None],
            "postprocessing": None if plan is None else plan["steps"],
        }
    )
    if case_json:
        from unetzoo.metrics.per_case import summarize_cases

        write_json(out / "cases.json", summarize_cases(per_case_json))
    # strict JSON, as the per-case files: NaN (not scored) -> null, inf -> "inf"
    write_json(out / "summary.json", summary)
    if verbose:
        print(table, end="", flush=True)
        print(f"report written to {out}", flush=True)
    if summary["never_predicted"]:
        # on stderr as well, so that it shows even when stdout goes to a log
        print(summary["warning"], file=sys.stderr, flush=True)
    return summary


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name))
