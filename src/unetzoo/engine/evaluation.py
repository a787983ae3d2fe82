"""Evaluation: the trainer's validation and ``unetzoo test`` (volume inference on a test
split, per-case metrics and the report).

:func:`validate` (called by the trainer each validation) and :func:`run_test` (the
report and its ``cases.json``) score each case with the one per-case evaluation,
:func:`unetzoo.metrics.score_case`, under the case's own rules
(:meth:`unetzoo.metrics.Reference.of_case`: ROI, ignore label, spacing when known), and
aggregate with :func:`unetzoo.metrics.summarize`. Nothing here imports the trainer or
``unetzoo.deploy``.

The report folder holds ``summary.md`` (the mean table laid out as in the papers: mean
DSC, mean HD95, one Dice column per class; then per class each mean with ``n``, the
number of cases that scored it), ``summary.json`` (strict JSON: a mean with no scored
case is ``null``, an infinite distance ``"inf"``), ``cases.csv`` (every case x class),
``overlays/*.png`` and, on request, ``predictions/*.nii.gz``. Its
``.unetzoo-outputs.json`` lists what unetzoo wrote there
(:class:`unetzoo.engine.run_folder.OutputFolder`): a re-run replaces those files, and a file
of the user's under one of these names is refused before the model is loaded unless
``overwrite``; other files are never touched.

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

import dataclasses
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unetzoo.data.imageio import save_case_labels
from unetzoo.data.plan import view_spacing
from unetzoo.engine.backends import check_backend, check_precision
from unetzoo.engine.checkpoint import Checkpoint, read_checkpoint
from unetzoo.engine.inference import predict_volume
from unetzoo.engine.logging.display import display_window
from unetzoo.engine.logging.plots import overlay_png, pick_slices
from unetzoo.engine.run_folder import ReportLayout, RunLayout, check_output_dir
from unetzoo.engine.selection import Selection
from unetzoo.engine.spec import InferenceSpec
from unetzoo.errors import CheckpointError, ConfigError, DataError
from unetzoo.metrics import (
    Reference,
    ScoringRules,
    format_table,
    never_predicted_warning,
    present_classes,
    score_case,
    scored_mean,
    summarize,
    write_case_csv,
)
from unetzoo.metrics.case import RECORD_METRICS
from unetzoo.metrics.nsd import check_tolerance
from unetzoo.metrics.per_case import summarize_cases, write_json
from unetzoo.runs.outputs import OutputFolder

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


def _check_unit(cid: str, unit: str, units: set[str]) -> None:
    """HD95 in mm and in voxels are never averaged: a case whose unit differs from the
    earlier cases' is a one-line DataError."""
    if units and unit not in units:
        raise DataError(
            f"{cid} has {'no' if unit == 'voxels' else 'a'} known voxel spacing "
            f"but earlier cases' HD95 is in {next(iter(units))}: HD95 in mm and in voxels "
            "cannot be averaged; fix its header (pixdim 0, no qform/sform) or test with "
            "--protocol transunet (HD95 in voxels)")
    units.add(unit)


def mean_table(
    per_case: dict[str, dict[int, dict[str, float]]],
    class_names: Sequence[str],
    protocol: str = "strict",
    *,
    predicted: set[int] | None = None,
    model_name: str = "unetzoo",
    hd_unit: str = "mm",
) -> tuple[dict[str, Any], str]:
    """Per-class means over the scored cases, then the mean over classes (TransUNet's
    order; under ``"strict"`` NaN cells are not scored and left out), through
    :func:`unetzoo.metrics.summarize` and :func:`unetzoo.metrics.format_table`.

    Args:
        per_case: ``{case id: {class index: {metric: value}}}``
            (:meth:`unetzoo.metrics.CaseScore.by_class`).
        class_names: names indexed by class (index 0 background).
        predicted: classes the model predicted in at least one case (None: unchecked).

    Returns:
        ``(summary, markdown)``: ``summary`` is ``{"mean_<metric>"..., "per_class":
        {name: {<metric>..., "n_<metric>"..., "predicted"}}, "cases",
        "classes_in_mean", "never_predicted": [names], "warning"}``; ``markdown`` the
        table of :func:`unetzoo.metrics.format_table`.
    """
    if not per_case:
        raise DataError("no test case was evaluated; nothing to summarize")
    table = summarize(per_case, class_names, protocol, predicted=predicted)
    metrics = table.metrics
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


def _cfg(cfg: Mapping[str, Any] | Any, key: str) -> Any:
    # the trainer passes its TrainConfig, callers of the old signature a dict
    return cfg[key] if isinstance(cfg, Mapping) else getattr(cfg, key)


@torch.no_grad()
def validate(
    model: torch.nn.Module, ds, split: str, cases: list[str], cfg: Mapping[str, Any] | Any,
    device, collect: dict[str, Any] | None = None,
) -> dict[str, float]:
    """Mean foreground Dice and HD95 over ``cases`` (volume inference, TransUNet resize),
    as the trainer's validation step. ``cfg`` gives ``img_size``, ``batch_size``,
    ``amp`` and ``protocol`` (a dict or the trainer's config object).

    The same per-case evaluation (:func:`unetzoo.metrics.score_case` under the case's
    own rules; HD95 in mm and in voxels never averaged) and aggregation
    (:func:`unetzoo.metrics.summarize`) as the test report: per class the mean over the
    cases that scored it, then the mean over the classes with at least one scored case.
    Under ``"strict"`` a class absent from both prediction and reference is not scored
    (it never counts as a success) and a missed class scores Dice 0; ``val_dice`` is
    NaN when no class was scored at all, which never beats a best model.

    ``collect`` (for TensorBoard), when given, receives ``"per_class_dice"`` ``{class
    name: mean Dice}`` and ``"samples"``, one :class:`~unetzoo.engine.logging.tensorboard.
    ValidationSample` for each of the first ``IMAGES_PER_VALIDATION`` cases.
    """
    from unetzoo.engine.logging.tensorboard import IMAGES_PER_VALIDATION, pick_sample

    model = getattr(model, "module", model)  # DistributedDataParallel wraps the model
    was_training = model.training
    model.eval()
    protocol = _cfg(cfg, "protocol")
    rules = ScoringRules(ds.num_classes, protocol)
    per_case: dict[str, dict[int, dict[str, float]]] = {}
    units: set[str] = set()
    try:
        for cid in cases:
            case = ds.load_case(cid, split)
            pred = predict_volume(
                model, case.image, int(_cfg(cfg, "img_size")),
                batch_size=int(_cfg(cfg, "batch_size")), device=device,
                amp=bool(_cfg(cfg, "amp")), plan=getattr(ds, "plan", None), spacing=case.spacing,
            )
            score = score_case(pred, Reference.of_case(case), rules)
            _check_unit(f"validation case {cid!r}", score.distance_unit, units)
            per_case[str(cid)] = score.by_class()
            if collect is not None and len(collect.setdefault("samples", [])) < IMAGES_PER_VALIDATION:
                collect["samples"].append(pick_sample(case, pred))
    finally:
        model.train(was_training)
    table = summarize(per_case, list(ds.class_names), protocol)
    if collect is not None:
        collect["per_class_dice"] = {
            name: float(table.per_class["dice"][k]) for k, name in enumerate(table.class_names)
        }
    return {"val_dice": float(table.mean["dice"]), "val_hd95": float(table.mean["hd95"])}


@dataclass(frozen=True)
class _Settings:
    """How ``run_test`` evaluates and what it writes (its keyword arguments, checked)."""

    split: str
    protocol: str
    metrics: tuple[str, ...]
    nsd_tolerance: float
    tta: bool
    batch_size: int
    overlays: int
    save_predictions: bool
    case_json: bool
    verbose: bool
    #: model class k -> dataset class remap[k] when dataset.json lists them in another order
    remap: np.ndarray | None = None


@dataclass
class _Results:
    """What the case loop of ``run_test`` gathers."""

    values: dict[str, dict[int, dict[str, float]]] = field(default_factory=dict)
    records: dict[str, dict[str, Any]] = field(default_factory=dict)  # cases.json
    predicted: set[int] = field(default_factory=set)
    units: set[str] = field(default_factory=set)


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
    overwrite: bool = False,
    strict_inputs: bool = False,
    precision: str = "fp32",
    selection: Selection | None = None, model: torch.nn.Module | None = None,
) -> dict[str, Any]:
    """Evaluate a checkpoint on a test split and write the report folder.

    Args:
        checkpoint: a path (or a :class:`Checkpoint`), or a list of paths: an
            ensemble averaging the members' softmax (:mod:`unetzoo.engine.ensemble`).
        dataset: a ``SegDataset``, a dataset name, or None (the checkpoint's dataset).
        data_root: root folder when ``dataset`` is a name. max_cases: the first N cases only.
        out_dir: report folder (default: ``<run>/report`` next to ``checkpoints/``).
        save_predictions: also write NIfTI label maps on the input files' grids.
        tta: flip test-time augmentation. protocol: ``"strict"`` or ``"transunet"``.
        overlays: overlay PNG slices per case (0 disables).
        backend: ``"torch"``, ``"onnxruntime"`` or ``"auto"`` on CPU
            (:mod:`unetzoo.engine.backends`; ONNX exports cached beside the checkpoint).
        postprocessing: ``"stored"`` (the plan stored with the first checkpoint, if
            any), a plan dict, or None (:mod:`unetzoo.engine.postprocess`).
        case_json: also write ``cases.json``, every metric per case and class in
            nnU-Net's summary layout (:mod:`unetzoo.metrics.per_case`).
        nsd_tolerance: NSD's tolerance in the HD95 unit (mm, or voxels).
        metrics: the report's metrics, a tuple or a comma list (default Dice and HD95;
            ``"dice,hd95,nsd"`` adds NSD columns to summary.md, summary.json, cases.csv).
        overwrite: replace report files unetzoo did not write (else refused before any work).
        strict_inputs: refuse data far outside the training inputs (:func:`check_test_data`).
        precision: ``"fp32"`` or ``"bf16"`` (native autocast only; in summary.json).
        selection: how a training run chose the checkpoint
            (:class:`~unetzoo.engine.selection.Selection`); None: given to ``unetzoo test``.
        model: score this model in memory (as given, no backend) instead of the weights.

    Returns:
        The summary (see :func:`mean_table`) plus ``"report_dir"``, ``"protocol"`` and
        ``"scored"`` (the checkpoint's ``file``, ``epoch``, ``max_epochs``, ``select``,
        ``reason``; summary.md says the same in one line).
    """
    device = _checked_device(backend, device, precision)
    settings = _Settings(
        split=split, protocol=protocol, metrics=check_report_metrics(metrics),
        nsd_tolerance=nsd_tolerance, tta=bool(tta), batch_size=int(batch_size),
        overlays=int(overlays or 0), save_predictions=bool(save_predictions),
        case_json=bool(case_json), verbose=bool(verbose),
    )
    check_tolerance(nsd_tolerance) if "nsd" in settings.metrics else None
    members, ckpt_path, ckpt, spec = _read_checkpoints(checkpoint)
    ds = _test_dataset(ckpt, spec, dataset, data_root)
    cases = _test_cases(ds, split, max_cases)
    settings = check_test_data(spec, ds, cases, settings, strict_inputs)
    report, outputs = _report_folder(out_dir, ckpt_path, cases, settings, overwrite)
    model = _test_model(ckpt, ckpt_path, members, backend, device, verbose, precision, model)
    plan = _postprocessing_plan(ckpt, ckpt_path, postprocessing)
    t0 = time.time()
    results = _evaluate_cases(model, ds, cases, spec, plan, (report, outputs), settings, device)
    return _write_report(report, outputs, results, ds, spec, settings, {
        "tta": settings.tta, "precision": precision, "seconds": round(time.time() - t0, 2),
        "report_dir": str(report.root),
        "checkpoints": members or [str(ckpt_path) if ckpt_path else None],
        "postprocessing": None if plan is None else plan["steps"],
        "scored": scored_checkpoint(ckpt, ckpt_path, members, selection),
    })


def _checked_device(backend: str, device: str | torch.device | None, precision: str):
    """Bad backend, device or precision names, and absent GPUs, are one line before any
    work; returns the device."""
    from unetzoo.engine.distributed import check_device, resolve_device

    check_backend(backend)
    if not isinstance(device, torch.device):  # a name: checked, and present here
        device = check_device(device)
        resolve_device(device)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    check_precision(precision, device)
    return device


def scored_checkpoint(ckpt: Checkpoint, ckpt_path: Path | None,
                      members: list[str] | None,
                      selection: Selection | None = None) -> dict[str, Any]:
    """Which checkpoint a report scores and why: ``{"file", "epoch", "max_epochs",
    "select", "reason"}`` (an ensemble: its files, no epoch)."""
    if members is not None and len(members) > 1:
        return {"file": [Path(m).name for m in members], "epoch": None, "max_epochs": None,
                "select": None, "reason": f"ensemble of {len(members)} checkpoints"}
    epoch = ckpt.epoch
    max_epochs = ckpt.config.get("max_epochs")
    chosen = selection.to_dict() if selection is not None else {
        "select": None, "reason": "the checkpoint given to the test (--checkpoint)"}
    return {"file": ckpt_path.name if ckpt_path is not None else None,
            "epoch": int(epoch) if isinstance(epoch, int) else None,
            "max_epochs": int(max_epochs) if isinstance(max_epochs, int) else None, **chosen}


def _scored_line(scored: dict[str, Any]) -> str:
    """summary.md's line naming the scored checkpoint: ``Scored: final.pt, epoch 30 of 30
    (final epoch (default; ...)).``"""
    files = scored.get("file")
    name = ", ".join(files) if isinstance(files, list) else files or "a checkpoint in memory"
    epoch = "" if scored.get("epoch") is None else f", epoch {scored['epoch']}" + (
        "" if scored.get("max_epochs") is None else f" of {scored['max_epochs']}")
    return f"Scored checkpoint: {name}{epoch}: {scored['reason']}.\n\n"


def _read_checkpoints(
    checkpoint,
) -> tuple[list[str] | None, Path | None, Checkpoint, InferenceSpec]:
    """``(ensemble members or None, path of the first checkpoint or None, the checkpoint,
    its inference spec)``. Ensemble members must share the spec, which
    :func:`unetzoo.engine.ensemble.load_ensemble` checks when it loads them
    (:func:`~unetzoo.engine.ensemble.check_compatible`)."""
    members = [str(p) for p in checkpoint] if isinstance(checkpoint, (list, tuple)) else None
    first = members[0] if members else checkpoint
    if isinstance(first, Checkpoint):
        return members, None, first, first.spec
    ckpt = read_checkpoint(first)
    return members, Path(first), ckpt, ckpt.spec


def _test_dataset(ckpt: Checkpoint, spec: InferenceSpec, dataset,
                  data_root: str | Path | None):
    """The dataset to test on (a ``SegDataset``, a name, or None: the checkpoint's),
    checked against the spec's classes and input channels."""
    from unetzoo.data import get_dataset

    if dataset is None or isinstance(dataset, str):
        name = dataset or spec.dataset
        options: dict[str, Any] = {}
        train_cfg = ckpt.config
        if name == spec.dataset:
            # The data it was trained on: same reader options (and root unless given).
            options = dict(train_cfg.get("dataset_options") or {})
            data_root = data_root if data_root is not None else train_cfg.get("data_root")
        if spec.plan is not None:  # a planned model: its own normalisation, whatever the data
            options["preprocessing"] = dict(spec.preprocessing)
        dataset = get_dataset(name, data_root, **options)
    ds = dataset
    if ds.num_classes != spec.num_classes:
        raise CheckpointError(
            f"checkpoint predicts {spec.num_classes} classes but dataset {ds.name!r} has "
            f"{ds.num_classes}; test it on the data it was trained for"
        )
    if spec.in_channels != int(ds.in_channels):
        raise CheckpointError(
            f"checkpoint takes {spec.in_channels} input channel(s) but dataset "
            f"{ds.name!r} has {ds.in_channels}"
        )
    return ds


def match_class_names(spec: InferenceSpec, ds) -> np.ndarray | None:
    """The model's classes matched with the dataset's by name: None when they agree,
    ``remap`` (model class k is dataset class ``remap[k]``) when the dataset lists the
    same names in another order (one line says so); other names are refused (a model's
    class 1 scored against another class 1 gave liver Dice 0.06 instead of 0.86)."""
    model, data = [n.strip().lower() for n in spec.class_names], \
        [n.strip().lower() for n in ds.class_names]
    if model == data:
        return None
    if sorted(model) != sorted(data) or len(set(model)) != len(model):
        raise CheckpointError(
            f"the checkpoint's classes {list(spec.class_names)} are not dataset "
            f"{ds.name!r}'s {list(ds.class_names)}; test it on data labelled for its classes "
            "(or rename the labels in dataset.json)")
    remap = np.array([data.index(n) for n in model], dtype=np.int64)
    moved = ", ".join(f"{spec.class_names[k]} {k}->{j}" for k, j in enumerate(remap) if k != j)
    print(f"classes matched by name: dataset {ds.name!r} lists them in another order "
          f"({moved}); predictions are scored under the dataset's numbering", file=sys.stderr,
          flush=True)
    return remap


def check_test_data(spec: InferenceSpec, ds, cases: list[str], settings: _Settings,
                strict: bool = False) -> _Settings:
    """The test data against the checkpoint, before any work: class names matched
    (:func:`match_class_names`: another order mapped by name, other names refused) and
    modality and intensities checked (:func:`check_test_inputs`). Volumes are then
    predicted in the model's training orientation (``spec.orientation``) and scored on
    the dataset's grid (:func:`_orientation`)."""
    check_test_inputs(ds, settings.split, cases, spec, strict)
    return dataclasses.replace(settings, remap=match_class_names(spec, ds))


#: Test cases whose raw intensities are checked against the training fingerprint.
INPUT_CHECK_CASES = 3


def check_test_inputs(ds, split: str, cases: list[str], spec: InferenceSpec,
                      strict: bool = False) -> None:
    """The dataset's modality and (when its reader gives raw images, ``ds.raw_image``)
    the raw intensities of up to :data:`INPUT_CHECK_CASES` cases against the checkpoint's
    fingerprint (``spec.intensity``): one warning line each, a :class:`DataError` under
    ``strict``. Older checkpoints carry no fingerprint: nothing is checked."""
    from unetzoo.data.preprocessing import intensity_mismatch, scale_free

    fingerprint = spec.intensity
    if not fingerprint:
        return
    trained, have = fingerprint.get("modality"), getattr(ds, "modality", None)
    problems = []
    if trained and have and str(trained).lower() != str(have).lower():
        problems.append(f"dataset {ds.name!r} is {have} but the model was trained on {trained}")
    raw = getattr(ds, "raw_image", None)
    picks = cases[:: max(1, len(cases) // INPUT_CHECK_CASES)][:INPUT_CHECK_CASES]
    for cid in picks if raw is not None else []:
        why = intensity_mismatch(raw(cid, split), fingerprint, scale_free(dict(spec.preprocessing)))
        if why:
            problems.append(f"case {cid} is far outside the training intensities: {why}")
            break
    for text in problems:
        if strict:
            raise DataError(f"{text}; refused under --strict-inputs")
        print(f"warning: {text}; its scores are likely meaningless (--strict-inputs refuses "
              "this)", file=sys.stderr, flush=True)


def _test_cases(ds, split: str, max_cases: int | None) -> list[str]:
    if split not in ds.splits() or not ds.cases(split):
        raise DataError(f"dataset {ds.name!r} at {ds.root} has no {split!r} cases to test on")
    cases = list(ds.cases(split))
    return cases[: int(max_cases)] if max_cases else cases


def _test_model(ckpt: Checkpoint, ckpt_path: Path | None, members: list[str] | None,
                backend: str, device, verbose: bool, precision: str = "fp32",
                given: torch.nn.Module | None = None) -> torch.nn.Module:
    """The checkpoint's model (or the ensemble of ``members``) behind ``backend``; a model
    ``given`` to ``run_test`` as it is."""
    if given is not None:
        return given
    from unetzoo.engine.backends import make_backend

    if members is not None and len(members) > 1:
        from unetzoo.engine.ensemble import load_ensemble

        model, _ = load_ensemble(members, device, wrap=lambda m, path, ck: make_backend(
            m, backend, checkpoint=path, spec=ck.spec, device=device, verbose=verbose,
            precision=precision))
        return model
    model = ckpt.build_model(device)
    from unetzoo.engine.inference import check_memory

    check_memory(model, ckpt.spec.img_size, ckpt.spec.in_channels, str(ckpt_path))
    return make_backend(model, backend, checkpoint=ckpt_path, spec=ckpt.spec, device=device,
                        verbose=verbose, precision=precision)


def _postprocessing_plan(ckpt: Checkpoint, ckpt_path: Path | None,
                         postprocessing: dict[str, Any] | str | None) -> dict[str, Any] | None:
    from unetzoo.engine.postprocess import check_plan, plan_for_checkpoint

    if postprocessing == "stored":
        return plan_for_checkpoint(ckpt, ckpt_path)
    return None if postprocessing is None else check_plan(postprocessing)


def _report_folder(out_dir: str | Path | None, ckpt_path: Path | None, cases: list[str],
                   settings: _Settings, overwrite: bool) -> tuple[ReportLayout, OutputFolder]:
    """The report folder (default ``RUN/report`` of the checkpoint's run), its targets
    claimed (a file unetzoo did not write is refused unless ``overwrite``), checked and
    with its sub-folders made."""
    if out_dir is not None:
        report = ReportLayout(Path(out_dir))
    elif ckpt_path is not None:
        report = RunLayout.of_checkpoint(ckpt_path).report
    else:
        report = RunLayout(".").report
    outputs = OutputFolder(report.root, overwrite=overwrite)
    names = [p.name for p in (report.summary_md, report.summary_json, report.cases_csv)]
    names += [report.cases_json.name] if settings.case_json else []
    for cid in cases:
        if settings.save_predictions:
            names.append(f"{report.predictions.name}/{_safe(cid)}.nii.gz")
        if settings.overlays:  # slice numbers are known after the prediction: the family
            names += outputs.existing(rf"{re.escape(_safe(cid))}_slice\d{{3,}}\.png",
                                      report.overlays.name)
    outputs.claim(names)
    check_output_dir(report.root)
    for wanted, sub in ((settings.overlays, report.overlays),
                        (settings.save_predictions, report.predictions)):
        try:
            if wanted:
                sub.mkdir(exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot make the report folder {sub} ({exc.strerror or exc}); "
                              "choose another --output folder") from exc
    return report, outputs


def _evaluate_cases(model, ds, cases: list[str], spec: InferenceSpec, plan,
                    folder: tuple[ReportLayout, OutputFolder], settings: _Settings,
                    device) -> _Results:
    """Predict, score and draw every case (recording each file in the report folder's
    manifest); one console line per case when verbose."""
    report, outputs = folder
    from unetzoo.engine.postprocess import apply_postprocessing

    class_names = list(ds.class_names)  # the model's, matched by name (match_class_names)
    # cases.json holds every metric: score them all in the same pass as the report's
    wanted = tuple(dict.fromkeys(settings.metrics + (RECORD_METRICS if settings.case_json else ())))
    rules = ScoringRules(ds.num_classes, settings.protocol, wanted,
                         nsd_tolerance=settings.nsd_tolerance)
    res = _Results()
    for i, cid in enumerate(cases):
        case = ds.load_case(cid, settings.split)
        if case.label is None:
            raise DataError(f"test case {cid!r} of {ds.name!r} has no label; use `unetzoo predict`")
        view = _orientation(case, spec)
        pred = predict_volume(model, case.image if view is None else view.forward(case.image),
                              spec.img_size, batch_size=settings.batch_size,
                              tta=settings.tta, device=device, plan=spec.plan,
                              spacing=view_spacing(case.spacing, view))
        pred = pred if view is None else view.back(pred)
        if settings.remap is not None:
            pred = settings.remap[pred]
        if plan is not None:
            pred = apply_postprocessing(pred, plan)
        ref = Reference.of_case(case, class_names)
        score = score_case(pred, ref, rules)
        res.values[cid] = {k: {m: float(s.values[m]) for m in settings.metrics}
                           for k, s in score.classes.items()}
        if settings.case_json:
            res.records[cid] = score.record()
        res.predicted |= present_classes(pred, ds.num_classes, ref.scored_region())
        _check_unit(f"test case {cid!r}", score.distance_unit, res.units)
        written = _write_case_files(report, cid, case, pred, class_names, settings)
        outputs.record(p.relative_to(report.root) for p in written)
        if settings.verbose and "dice" in settings.metrics:
            mean, n = scored_mean([v["dice"] for v in res.values[cid].values()])
            dice = f"{mean:.4f}" if n else "n/a (no class present)"
            print(f"[{i + 1}/{len(cases)}] {cid}: mean Dice {dice} over {n} "
                  "scored class(es)", flush=True)
    return res


def _orientation(case, spec: InferenceSpec):
    """The case's reorientation into the model's training orientation, or None."""
    from unetzoo.data.geometry import reorientation

    if case.image.shape[1] == 1:
        return None
    view = reorientation(getattr(case, "affine", None), spec.orientation)
    return None if view is None or view.identity else view


def _write_case_files(report: ReportLayout, cid: str, case, pred: np.ndarray,
                      class_names: list[str], settings: _Settings) -> list[Path]:
    """The case's label map (``--save-nifti``) and overlay PNGs; returns the files written."""
    ignore = getattr(case, "ignore_label", None)
    written: list[Path] = []
    if settings.save_predictions:
        # The input file's shape, voxel order and affine (Case.axes undoes the reader's
        # slicing order), as `predict` writes; no affine: a diagonal one of the spacing.
        affine = case.affine if case.affine is not None else np.diag([*map(float, case.spacing), 1.0])
        written.append(report.predictions / f"{_safe(cid)}.nii.gz")
        save_case_labels(pred, affine, written[-1], getattr(case, "axes", None))
    if settings.overlays:
        # Radiological orientation from the affine, one window for the whole volume.
        window = display_window(case.image[0])
        for z in pick_slices(case.label, settings.overlays, ignore_label=ignore):
            written.append(report.overlays / f"{_safe(cid)}_slice{z:03d}.png")
            overlay_png(
                written[-1], case.image[0, z], pred[z], class_names, gt=case.label[z],
                title=f"{cid}, slice {z}", affine=case.affine, window=window,
                ignore_label=ignore,
            )
    return written


def _write_report(report: ReportLayout, outputs: OutputFolder, res: _Results, ds,
                  spec: InferenceSpec, settings: _Settings,
                  provenance: dict[str, Any]) -> dict[str, Any]:
    """summary.md, cases.csv, summary.json (the summary, then ``provenance``) and, on
    request, cases.json, recorded in the folder's manifest; prints the table and the
    never-predicted warning."""
    metrics = settings.metrics
    class_names = list(ds.class_names)  # the model's, matched by name (match_class_names)
    hd_unit = res.units.pop() if res.units else "mm"  # one unit: mixed ones are refused
    model_name = spec.model
    summary, table = mean_table(res.values, class_names, settings.protocol,
                                predicted=res.predicted, model_name=model_name,
                                hd_unit=hd_unit)
    title = getattr(ds, "title", None) or ds.name  # dataset.json's "name" when it has one
    if "nsd" in metrics:
        table += (f"\nNSD: normalized surface Dice at tolerance {settings.nsd_tolerance:g} "
                  f"({hd_unit}).\n")
    from unetzoo.data.io import atomic_write_text
    from unetzoo.models.weights_maps import encoder_provenance

    encoder = encoder_provenance(model_name, dict(spec.options))
    note = f"\nNote: {encoder['encoder_note']}.\n" if "encoder_note" in encoder else ""
    atomic_write_text(report.summary_md, f"# Test of {model_name} on {title} ({settings.split})\n\n"
                      + _scored_line(provenance["scored"]) + table + note)
    write_case_csv(res.values, report.cases_csv, class_names, protocol=None, digits=6)
    if settings.case_json:
        write_json(report.cases_json, summarize_cases(res.records))
    if settings.verbose:
        print(table, end="", flush=True)
    summary.update({
        "model": model_name,
        "dataset": ds.name,
        "split": settings.split,
        "protocol": settings.protocol,
        "hd95_unit": hd_unit,
        "metrics": list(metrics),
        **({"nsd_tolerance": float(settings.nsd_tolerance)} if "nsd" in metrics else {}),
        **encoder,
        **provenance,
    })
    # strict JSON, as the per-case files: NaN (not scored) -> null, inf -> "inf"
    write_json(report.summary_json, summary)
    outputs.record(p.relative_to(report.root) for p in (
        report.summary_md, report.cases_csv, report.summary_json,
        *([report.cases_json] if settings.case_json else [])))
    if settings.verbose:
        print(f"report written to {report.root}", flush=True)
    if summary["never_predicted"]:
        # on stderr as well, so that it shows even when stdout goes to a log
        print(summary["warning"], file=sys.stderr, flush=True)
    return summary


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name))
