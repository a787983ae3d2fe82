"""Largest-connected-component post-processing, decided on cross-validation (nnU-Net).

nnU-Net v2's ``determine_postprocessing`` (``nnunetv2/postprocessing/
remove_connected_components.py``), step for step:

1. **Foreground as a whole**: keep only the largest connected component of the union of
   all foreground classes (voxels of the other components become background). Accepted
   when the mean over foreground classes of the per-class mean Dice strictly improves
   *and* no class's mean Dice gets worse.
2. **Per class** (only with more than one foreground class), in label order, on the
   result of the steps accepted so far: keep only the largest component of that class.
   Accepted when that class's mean Dice strictly improves.

Dice per case is ``2 TP / (2 TP + FP + FN)``, NaN when the class is absent from both maps
(left out of the class mean), scored by :func:`unetzoo.metrics.score_case` under each
case's own rules as ``unetzoo test`` scores it: voxels outside the case's ROI or whose
reference is the ignore label count for nothing. Components are connected through faces, edges and corners (full connectivity,
as ``skimage.measure.label(connectivity=None)`` in nnU-Net's ``acvl_utils``), and when
several components share the largest size all of them are kept (as acvl_utils does).

The decision is a JSON-able *plan* (:func:`determine_postprocessing`), stored with the
model (checkpoint key ``"postprocessing"`` or a ``postprocessing.json`` beside it) and
applied by :func:`apply_postprocessing` -- never a pickle of functions, as nnU-Net's
``postprocessing.pkl`` is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from unetzoo.engine.checkpoint import Checkpoint
from unetzoo.errors import DataError
from unetzoo.metrics import Reference, ScoringRules, score_case, summarize
from unetzoo.metrics.per_case import write_json

PLAN_FORMAT = "unetzoo-postprocessing"
PLAN_VERSION = 1
STEP_KIND = "keep_largest_component"
PLAN_FILE = "postprocessing.json"


def keep_largest_component(mask: np.ndarray) -> np.ndarray:
    """Boolean mask of the largest connected component(s) of ``mask`` (full connectivity;
    ties all kept; an empty mask stays empty)."""
    m = np.asarray(mask, dtype=bool)
    labeled, n = ndimage.label(m, structure=ndimage.generate_binary_structure(m.ndim, m.ndim))
    if n <= 1:
        return m.copy()
    sizes = np.bincount(labeled.ravel())
    sizes[0] = 0
    keep = np.flatnonzero(sizes == sizes.max())
    return np.isin(labeled, keep)


def remove_all_but_largest_component(
    labels: np.ndarray, classes: Sequence[int], background: int = 0
) -> np.ndarray:
    """A copy of ``labels`` where the voxels of ``classes`` (taken together) outside their
    largest connected component are set to ``background``."""
    arr = np.asarray(labels)
    mask = np.isin(arr, np.asarray(list(classes)))
    out = arr.copy()
    out[mask & ~keep_largest_component(mask)] = background
    return out


def empty_plan(num_classes: int) -> dict[str, Any]:
    """A plan that changes nothing."""
    return {"format": PLAN_FORMAT, "version": PLAN_VERSION, "num_classes": int(num_classes),
            "steps": []}


def check_plan(plan: Any, where: str = "post-processing plan") -> dict[str, Any]:
    """``plan`` if it is a valid plan, else a one-line DataError naming ``where``."""
    if not isinstance(plan, dict) or plan.get("format") != PLAN_FORMAT:
        raise DataError(f"{where}: not a unetzoo post-processing plan (format {PLAN_FORMAT!r})")
    if plan.get("version") != PLAN_VERSION:
        raise DataError(f"{where}: plan version {plan.get('version')!r} is not {PLAN_VERSION}")
    steps = plan.get("steps")
    ok = isinstance(steps, list) and all(
        isinstance(s, dict)
        and s.get("kind") == STEP_KIND
        and isinstance(s.get("classes"), list)
        and s["classes"]
        and all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in s["classes"])
        for s in steps
    )
    if not ok:
        raise DataError(
            f"{where}: 'steps' must be a list of {{\"kind\": \"{STEP_KIND}\", \"classes\": "
            "[foreground class indices]}"
        )
    return plan


def apply_postprocessing(labels: np.ndarray, plan: dict[str, Any] | None) -> np.ndarray:
    """``labels`` with the plan's steps applied in order (a copy; ``None`` = no change)."""
    arr = np.asarray(labels)
    if plan is None:
        return arr.copy()
    check_plan(plan)
    if arr.dtype.kind not in "biu":
        raise DataError(f"post-processing needs an integer label map, got dtype {arr.dtype}")
    n = plan.get("num_classes")
    if isinstance(n, int) and arr.size and int(arr.max()) >= n:
        raise DataError(
            f"label map holds class {int(arr.max())} but the post-processing plan was "
            f"made for {n} classes; use the plan of this model"
        )
    out = arr.copy()
    for step in plan["steps"]:
        out = remove_all_but_largest_component(out, step["classes"])
    return out


def _class_means(
    preds: Sequence[np.ndarray], refs: Sequence[Reference], rules: ScoringRules,
) -> tuple[dict[int, float], float]:
    """Per class the mean Dice over the cases that scored it, and the mean over the
    scored classes (the report's aggregation, :func:`unetzoo.metrics.summarize`)."""
    per_case = {str(i): score_case(p, g, rules).by_class()
                for i, (p, g) in enumerate(zip(preds, refs))}
    table = summarize(per_case)
    return dict(zip(table.class_indices, table.per_class["dice"])), table.mean["dice"]


def _better(new: float, old: float) -> bool:
    return not math.isnan(new) and (math.isnan(old) or new > old)


def _worse(new: float, old: float) -> bool:
    return not math.isnan(new) and not math.isnan(old) and new < old


def determine_postprocessing(
    predictions: Sequence[np.ndarray],
    references: Sequence[Reference],
    num_classes: int,
    *,
    class_names: Sequence[str] | None = None,
    verbose: bool = False,
) -> dict[str, Any]:
    """The post-processing plan that cross-validation supports (see the module docstring).

    Args:
        predictions: label maps of the validation cases of every fold (the predictions
            of the fold that did not train on the case).
        references: the cases, pairwise (:class:`unetzoo.metrics.Reference`, e.g.
            ``Reference.of_case(case)``: labels, ROI, ignore label, spacing).
        num_classes: classes including background.
        class_names: names for the messages and the plan.

    Returns:
        A JSON-able plan: ``{"format", "version", "num_classes", "steps": [{"kind":
        "keep_largest_component", "classes": [...]}, ...], "dice_before": {...},
        "dice_after": {...}, "cases": n, "rule": ...}``.
    """
    if len(predictions) != len(references):
        raise DataError(
            f"{len(predictions)} prediction(s) but {len(references)} reference(s); pass one "
            "prediction per validation case"
        )
    if not predictions:
        raise DataError("no cross-validation predictions to decide post-processing on")
    rules = ScoringRules(num_classes, metrics=("dice",))  # nnU-Net's: strict Dice
    num_classes = rules.num_classes

    def name(c: int) -> str:
        return class_names[c] if class_names is not None and c < len(class_names) else str(c)

    def say(msg: str) -> None:
        if verbose:
            print(msg, flush=True)

    fg = list(range(1, num_classes))
    current = [np.asarray(p) for p in predictions]
    base, base_fg = _class_means(current, references, rules)
    before, before_fg = dict(base), base_fg
    steps: list[dict[str, Any]] = []

    cand = [remove_all_but_largest_component(p, fg) for p in current]
    new, new_fg = _class_means(cand, references, rules)
    if _better(new_fg, base_fg) and not any(_worse(new[c], base[c]) for c in fg):
        say(f"largest foreground component: mean Dice {base_fg:.5f} -> {new_fg:.5f}")
        steps.append({"kind": STEP_KIND, "classes": fg})
        current, base, base_fg = cand, new, new_fg
    else:
        say("largest foreground component: no improvement")

    if len(fg) > 1:
        for c in fg:
            cand = [remove_all_but_largest_component(p, [c]) for p in current]
            new, new_fg = _class_means(cand, references, rules)
            if _better(new[c], base[c]):
                say(f"largest component of {name(c)}: Dice {base[c]:.5f} -> {new[c]:.5f}")
                steps.append({"kind": STEP_KIND, "classes": [c]})
                current, base, base_fg = cand, new, new_fg
            else:
                say(f"largest component of {name(c)}: no improvement")

    plan = empty_plan(num_classes)
    plan.update(
        steps=steps,
        cases=len(current),
        rule="nnU-Net v2 determine_postprocessing: foreground step if the foreground mean "
        "Dice improves and no class gets worse; then per class if its mean Dice improves",
        dice_before={name(c): before[c] for c in fg} | {"foreground_mean": before_fg},
        dice_after={name(c): base[c] for c in fg} | {"foreground_mean": base_fg},
    )
    if class_names is not None:
        plan["class_names"] = list(class_names)
    return plan


def save_plan(path: str | Path, plan: dict[str, Any]) -> Path:
    """Write a plan as strict JSON (NaN -> null), atomically."""
    check_plan(plan)
    return write_json(path, plan)


def load_plan(path: str | Path) -> dict[str, Any]:
    """Read and check a plan file (one-line DataError when missing or malformed)."""
    from unetzoo.data.io import read_json

    p = Path(path)
    return check_plan(read_json(p), str(p))


def plan_for_checkpoint(ckpt: Checkpoint | None, checkpoint_path: str | Path | None) -> dict | None:
    """The plan stored with a model: the checkpoint's ``postprocessing`` field, else a
    ``postprocessing.json`` in the checkpoint's folder that names this checkpoint file by
    its SHA-256 (``"checkpoint_sha256"``, written by :func:`crossval_postprocessing`),
    else None. A plan beside it that names other files (a retrained model, a copied or
    planted plan) is not applied; one stderr line says so."""
    if ckpt is not None and ckpt.postprocessing is not None:
        return check_plan(dict(ckpt.postprocessing), f"{checkpoint_path}: 'postprocessing'")
    if checkpoint_path is not None:
        beside = Path(checkpoint_path).parent / PLAN_FILE
        if beside.is_file():
            plan = load_plan(beside)
            from unetzoo.engine.backends import file_sha256

            named = plan.get("checkpoint_sha256")
            if (isinstance(named, list) and Path(checkpoint_path).is_file()
                    and file_sha256(checkpoint_path) in named):
                return plan
            import sys

            print(f"warning: {beside} was not decided for {Path(checkpoint_path).name} (it "
                  "does not name that file's SHA-256); not applied. Re-run `unetzoo "
                  "postprocess`, or pass --postprocessing FILE", file=sys.stderr, flush=True)
    return None


def crossval_predictions(
    checkpoints: Sequence[str | Path],
    device: str | Any = "cpu",
    batch_size: int = 16,
    verbose: bool = False,
) -> tuple[list[np.ndarray], list[np.ndarray], dict[str, Any]]:
    """Predictions of every fold model on its own validation cases, with the references.

    Each checkpoint must come from a ``--fold K`` run: its config names the fold and its
    run folder (two levels above ``checkpoints/best.pt``) holds the ``splits_final.json``
    it trained with; the dataset is reopened from the config. Returns ``(predictions,
    references, info)``: the references are the cases under their own rules
    (:meth:`unetzoo.metrics.Reference.of_case`), ``info = {"folds", "cases",
    "class_names"}``.
    """
    from unetzoo.data import get_dataset
    from unetzoo.data.folds import run_fold_cases
    from unetzoo.engine.checkpoint import read_checkpoint
    from unetzoo.engine.inference import predict_volume
    from unetzoo.errors import CheckpointError

    preds: list[np.ndarray] = []
    refs: list[Reference] = []
    folds: list[int] = []
    cases: list[str] = []
    names: list[str] | None = None
    for path in checkpoints:
        ck = read_checkpoint(path)
        cfg = ck.config
        fold = cfg.get("fold")
        if fold is None:
            raise CheckpointError(
                f"{path}: not a cross-validation run (trained without --fold); post-processing "
                "is decided on the validation predictions of fold runs"
            )
        if int(fold) in folds:
            raise CheckpointError(f"{path}: fold {fold} is given twice; give each fold once")
        if names is not None and list(ck.spec.class_names) != names:
            raise CheckpointError(f"{path}: class names differ from the other folds'")
        names = list(ck.spec.class_names)
        run_dir = Path(path).resolve().parent.parent
        _, val = run_fold_cases(run_dir, int(fold))
        ds = get_dataset(cfg.get("dataset"), cfg.get("data_root"),
                         **(cfg.get("dataset_options") or {}))
        model = ck.build_model(device)
        for cid in val:
            case = ds.load_case(cid, "train")
            if case.label is None:
                raise DataError(f"validation case {cid} of fold {fold} has no label")
            preds.append(predict_volume(model, case.image, ck.spec.img_size,
                                        batch_size=batch_size, device=device, plan=ck.spec.plan,
                                        spacing=case.spacing))
            refs.append(Reference.of_case(case))
            cases.append(cid)
        folds.append(int(fold))
        if verbose:
            print(f"fold {fold}: {len(val)} validation case(s) predicted", flush=True)
    info = {"folds": sorted(folds), "cases": cases, "class_names": names}
    return preds, refs, info


def crossval_postprocessing(
    checkpoints: Sequence[str | Path],
    device: str | Any = "cpu",
    batch_size: int = 16,
    write: bool = True,
    verbose: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Decide the plan on the fold models' validation predictions (nnU-Net's
    ``nnUNetv2_find_best_configuration`` post-processing step) and, with ``write``, store
    it as ``postprocessing.json`` beside every checkpoint, where ``predict`` finds it.
    A ``postprocessing.json`` there that unetzoo did not write is refused before any
    work unless ``overwrite`` (each folder's ``.unetzoo-outputs.json`` lists ours)."""
    from unetzoo.runs.outputs import OutputFolder

    folders = [OutputFolder(Path(p).parent, overwrite=overwrite) for p in checkpoints]
    if write:
        for folder in folders:
            folder.claim([PLAN_FILE])
    preds, refs, info = crossval_predictions(checkpoints, device, batch_size, verbose)
    names = info["class_names"]
    plan = determine_postprocessing(
        preds, refs, len(names), class_names=names, verbose=verbose,
    )
    plan["folds"] = info["folds"]
    from unetzoo.engine.backends import file_sha256

    # The checkpoints it was decided for: predict applies the plan beside a checkpoint
    # only to these files (plan_for_checkpoint).
    plan["checkpoint_sha256"] = sorted({file_sha256(p) for p in checkpoints})
    if write:
        for path, folder in zip(checkpoints, folders):
            save_plan(Path(path).parent / PLAN_FILE, plan)
            folder.record([PLAN_FILE])
    return plan
