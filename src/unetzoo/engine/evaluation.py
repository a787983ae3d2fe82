"""``unetzoo test``: volume inference on a test split, per-case metrics and the report.

The report folder holds ``summary.md`` (the mean table laid out as in the papers: mean
DSC, mean HD95, one Dice column per class), ``summary.json``, ``cases.csv`` (every case
x class), ``overlays/*.png`` and, on request, ``predictions/*.nii.gz``.

HD95 spacing: under ``protocol="strict"`` HD95 is in millimetres (the case's voxel
spacing); under ``protocol="transunet"`` it is in voxels, as the TransUNet test script
computes it (``medpy hd95`` without spacing), so the numbers compare with the tables.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unetzoo.engine.checkpoint import load_checkpoint, model_from_checkpoint
from unetzoo.engine.inference import predict_volume
from unetzoo.engine.logging.plots import overlay_png, pick_slices
from unetzoo.errors import CheckpointError, DataError


def case_metrics(pred: np.ndarray, case, num_classes: int, protocol: str = "strict") -> dict[int, dict[str, float]]:
    """Dice and HD95 per foreground class of one case: ``{class_index: {"dice", "hd95"}}``.

    Pixels outside ``case.roi`` (e.g. the DRIVE field of view) are ignored when present.
    """
    from unetzoo.metrics import evaluate_case

    spacing = tuple(float(s) for s in case.spacing) if protocol == "strict" else None
    result = evaluate_case(
        pred, case.label, num_classes, spacing=spacing, protocol=protocol,
        metrics=("dice", "hd95"), roi=case.roi,
    )
    return {int(k): {m: float(v) for m, v in vals.items()} for k, vals in result.items() if int(k) != 0}


def mean_table(rows: list[dict[str, Any]], class_names: list[str]) -> dict[str, Any]:
    """Per-class means over cases, then the mean over classes (TransUNet's order).

    Args:
        rows: one dict per case x class with ``class_index``, ``dice``, ``hd95``.

    Returns:
        ``{"mean_dice", "mean_hd95", "per_class": {name: {"dice", "hd95"}}, "cases"}``.
    """
    per_class: dict[str, dict[str, float]] = {}
    for k in range(1, len(class_names)):
        sel = [r for r in rows if r["class_index"] == k]
        if not sel:
            continue
        per_class[class_names[k]] = {
            "dice": float(np.mean([r["dice"] for r in sel])),
            "hd95": float(np.mean([r["hd95"] for r in sel])),
        }
    dice = [v["dice"] for v in per_class.values()]
    hd = [v["hd95"] for v in per_class.values()]
    return {
        "mean_dice": float(np.mean(dice)) if dice else float("nan"),
        "mean_hd95": float(np.mean(hd)) if hd else float("nan"),
        "per_class": per_class,
        "cases": len({r["case"] for r in rows}),
    }


def format_table(summary: dict[str, Any], model_name: str, protocol: str, hd_unit: str) -> str:
    """Markdown: one row per model with mean DSC (%), mean HD95 and per-class Dice (%)."""
    names = list(summary["per_class"])
    head = ["Model", "DSC (%)", f"HD95 ({hd_unit})", *names]
    row = [
        model_name,
        f"{100 * summary['mean_dice']:.2f}",
        f"{summary['mean_hd95']:.2f}",
        *[f"{100 * summary['per_class'][n]['dice']:.2f}" for n in names],
    ]
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] * len(head)) + "|",
        "| " + " | ".join(row) + " |",
        "",
        "| Class | Dice (%) | HD95 (" + hd_unit + ") |",
        "|---|---|---|",
    ]
    for n in names:
        v = summary["per_class"][n]
        lines.append(f"| {n} | {100 * v['dice']:.2f} | {v['hd95']:.2f} |")
    lines.append("")
    lines.append(f"{summary['cases']} case(s); metric protocol `{protocol}`.")
    return "\n".join(lines) + "\n"


def save_prediction_nifti(path: Path, labels: np.ndarray, case) -> Path:
    """Write a ``(D, H, W)`` label map as NIfTI on the case's grid.

    ``case.affine`` maps ``(d, h, w)`` indices of these arrays to world mm, so the array is
    stored as is with that affine (zooms follow); without one, a diagonal affine from
    ``case.spacing``.
    """
    from unetzoo.data.io import save_nifti

    affine = case.affine if case.affine is not None else np.diag([*map(float, case.spacing), 1.0])
    save_nifti(labels.astype(np.uint8), affine, path)
    return path


def run_test(
    checkpoint: str | Path | dict,
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
) -> dict[str, Any]:
    """Evaluate a checkpoint on a test split and write the report folder.

    Args:
        checkpoint: a path (or an already loaded checkpoint dict).
        dataset: a ``SegDataset``, a dataset name, or None (the checkpoint's dataset).
        data_root: root folder when ``dataset`` is a name.
        max_cases: evaluate only the first N test cases.
        out_dir: report folder (default: ``<run>/report`` next to ``checkpoints/``).
        save_predictions: also write NIfTI label maps with the input geometry.
        tta: flip test-time augmentation.
        protocol: empty-mask protocol, ``"strict"`` or ``"transunet"``.
        overlays: overlay PNG slices per case (0 disables).

    Returns:
        The summary (see :func:`mean_table`) plus ``"report_dir"`` and ``"protocol"``.
    """
    from unetzoo.data import get_dataset

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
    model = model_from_checkpoint(ckpt, device=device)
    img_size = int(ckpt["img_size"])
    if out_dir is None:
        base = ckpt_path.parent if ckpt_path is not None else Path(".")
        out_dir = (base.parent if base.name == "checkpoints" else base) / "report"
    out = Path(out_dir)
    from unetzoo.engine.trainer import check_output_dir

    check_output_dir(out)
    if overlays:
        (out / "overlays").mkdir(exist_ok=True)
    if save_predictions:
        (out / "predictions").mkdir(exist_ok=True)

    class_names = list(ckpt["class_names"])
    rows: list[dict[str, Any]] = []
    t0 = time.time()
    for i, cid in enumerate(cases):
        case = ds.load_case(cid, split)
        if case.label is None:
            raise DataError(f"test case {cid!r} of {ds.name!r} has no label; use `unetzoo predict`")
        pred = predict_volume(model, case.image, img_size, batch_size=batch_size, tta=tta, device=device)
        for k, vals in case_metrics(pred, case, ds.num_classes, protocol).items():
            rows.append({"case": cid, "class_index": k, "class_name": class_names[k], **vals})
        if save_predictions:
            save_prediction_nifti(out / "predictions" / f"{_safe(cid)}.nii.gz", pred, case)
        if overlays:
            for z in pick_slices(case.label, overlays):
                overlay_png(
                    out / "overlays" / f"{_safe(cid)}_slice{z:03d}.png",
                    case.image[0, z], pred[z], class_names, gt=case.label[z],
                    title=f"{cid}, slice {z}",
                )
        if verbose:
            dice = np.mean([r["dice"] for r in rows if r["case"] == cid])
            print(f"[{i + 1}/{len(cases)}] {cid}: mean Dice {dice:.4f}", flush=True)

    summary = mean_table(rows, class_names)
    hd_unit = "mm" if protocol == "strict" else "voxels"
    model_name = ckpt["model"]["name"]
    table = format_table(summary, model_name, protocol, hd_unit)
    (out / "summary.md").write_text(f"# Test of {model_name} on {ds.name} ({split})\n\n" + table)
    with (out / "cases.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["case", "class_index", "class_name", "dice", "hd95"])
        writer.writeheader()
        for r in rows:
            writer.writerow({**r, "dice": f"{r['dice']:.6f}", "hd95": f"{r['hd95']:.6f}"})
    summary.update(
        {
            "model": model_name,
            "dataset": ds.name,
            "split": split,
            "protocol": protocol,
            "hd95_unit": hd_unit,
            "tta": bool(tta),
            "seconds": round(time.time() - t0, 2),
            "report_dir": str(out),
        }
    )
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    if verbose:
        print(table, end="", flush=True)
        print(f"report written to {out}", flush=True)
    return summary


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name))
