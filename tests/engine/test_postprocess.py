"""Largest-connected-component post-processing decided on cross-validation, as nnU-Net v2's
determine_postprocessing (unetzoo.engine.postprocess)."""

from __future__ import annotations

import numpy as np
import pytest

from unetzoo.engine import postprocess as pp
from unetzoo.errors import DataError
from unetzoo.metrics import Reference


def test_keep_largest_component_full_connectivity_and_ties():
    m = np.zeros((7, 7), bool)
    m[0:2, 0:3] = True  # 6 voxels
    m[2, 3] = True  # touches the block only through a corner: same component (7)
    m[5:7, 5:7] = True  # 4 voxels
    out = pp.keep_largest_component(m)
    assert out.sum() == 7 and not out[5:, 5:].any()
    tie = np.zeros((5, 5), bool)
    tie[0, 0:2] = tie[4, 3:5] = True
    np.testing.assert_array_equal(pp.keep_largest_component(tie), tie)
    assert not pp.keep_largest_component(np.zeros((3, 3), bool)).any()


def test_classes_are_taken_together():
    lab = np.zeros((3, 9), np.int64)
    lab[1, 0:2] = 1
    lab[1, 2:4] = 2  # classes 1 and 2 touch: one 4-voxel foreground component
    lab[1, 7] = 1  # an island of class 1
    out = pp.remove_all_but_largest_component(lab, [1, 2])
    assert out[1, 7] == 0 and (out[1, :4] == [1, 1, 2, 2]).all()
    assert lab[1, 7] == 1  # input untouched


def _organ_cases(n=4, seed=0):
    """Class 1 one blob, class 2 two separate blobs (left/right, like kidneys); the
    predictions are the truth plus a small spurious class-1 island."""
    rng = np.random.default_rng(seed)
    preds, refs = [], []
    for _ in range(n):
        gt = np.zeros((4, 24, 24), np.int64)
        r = int(rng.integers(0, 3))
        gt[:, 8 + r : 16 + r, 8:16] = 1
        gt[:, 2:6, 1:5] = 2
        gt[:, 2:6, 19:23] = 2
        pred = gt.copy()
        pred[1:3, 20:22, 20:22] = 1
        preds.append(pred)
        refs.append(Reference(gt))
    return preds, refs


def test_determined_per_class_like_nnunet():
    preds, refs = _organ_cases()
    plan = pp.determine_postprocessing(preds, refs, 3, class_names=["bg", "liver", "kidney"])
    # Foreground as a whole would drop the kidneys (class 2 worse): refused; class 1's
    # island removal improves its Dice: kept; class 2's second kidney must stay.
    assert plan["steps"] == [{"kind": pp.STEP_KIND, "classes": [1]}]
    assert plan["dice_after"]["liver"] > plan["dice_before"]["liver"]
    assert plan["dice_after"]["kidney"] == plan["dice_before"]["kidney"] == 1.0
    out = pp.apply_postprocessing(preds[0], plan)
    np.testing.assert_array_equal(out, refs[0].labels)


def test_foreground_step_for_a_single_class():
    preds, refs = _organ_cases()
    preds = [np.where(p == 2, 0, p) for p in preds]
    refs = [Reference(np.where(r.labels == 2, 0, r.labels)) for r in refs]
    plan = pp.determine_postprocessing(preds, refs, 2)
    assert plan["steps"] == [{"kind": pp.STEP_KIND, "classes": [1]}]
    assert plan["dice_after"]["foreground_mean"] == 1.0


def test_nothing_when_it_does_not_help():
    _, refs = _organ_cases()
    plan = pp.determine_postprocessing([r.labels for r in refs], refs, 3)
    assert plan["steps"] == []
    # An island inside the reference's ignore region costs nothing: not removed either.
    preds, refs = _organ_cases()
    labels = [r.labels.copy() for r in refs]
    for r in labels:
        r[:, 18:24, 18:24] = np.where(r[:, 18:24, 18:24] == 0, 9, r[:, 18:24, 18:24])
    plan = pp.determine_postprocessing(preds, [Reference(r, ignore_label=9) for r in labels], 3)
    assert [1] not in [s["classes"] for s in plan["steps"]]


def test_decided_inside_the_cases_roi_as_the_test_scores():
    """A spurious island outside the case's ROI (e.g. DRIVE's field of view) counts for
    nothing in `unetzoo test`, so the plan search must not remove a real second
    component to get rid of it. Scored on the whole image, the island (16 voxels) costs
    more than the small real component (4 voxels) and the step would be taken."""
    gt = np.zeros((1, 20, 20), np.int64)
    gt[0, 2:8, 2:8] = 1  # the big component
    gt[0, 12:14, 2:4] = 1  # a small real one, inside the ROI
    pred = gt.copy()
    pred[0, 14:18, 14:18] = 1  # outside the ROI
    roi = np.zeros_like(gt, bool)
    roi[:, :, :12] = True
    whole = pp.determine_postprocessing([pred], [Reference(gt)], 2)
    inside = pp.determine_postprocessing([pred], [Reference(gt, roi=roi)], 2)
    assert whole["steps"] == [{"kind": pp.STEP_KIND, "classes": [1]}]
    assert inside["steps"] == [] and inside["dice_before"]["foreground_mean"] == 1.0
    # The spacing of a case never changes the plan's Dice (voxels or mm alike).
    assert pp.determine_postprocessing([pred], [Reference(gt, (3.0, 0.7, 0.7), roi)], 2) == \
        inside


def test_plan_round_trips_through_json_and_the_checkpoint(tmp_path):
    preds, refs = _organ_cases()
    plan = pp.determine_postprocessing(preds, refs, 3)
    path = pp.save_plan(tmp_path / pp.PLAN_FILE, plan)
    loaded = pp.load_plan(path)
    np.testing.assert_array_equal(
        pp.apply_postprocessing(preds[1], loaded), pp.apply_postprocessing(preds[1], plan)
    )
    from ckpt_helpers import save_model_checkpoint
    from unetzoo import create_model
    from unetzoo.engine.checkpoint import read_checkpoint

    stored = save_model_checkpoint(tmp_path / "stored" / "best.pt",
                                   create_model("unet", 1, 3, base_channels=4),
                                   class_names=["background", "a", "b"], postprocessing=loaded)
    assert pp.plan_for_checkpoint(read_checkpoint(stored), None) == loaded
    ckpt = tmp_path / "best.pt"
    ckpt.write_bytes(b"a checkpoint")
    assert pp.plan_for_checkpoint(None, ckpt) is None  # beside it, but names no checkpoint
    from unetzoo.engine.backends import file_sha256

    named = pp.save_plan(path, {**plan, "checkpoint_sha256": [file_sha256(ckpt)]})
    assert pp.plan_for_checkpoint(None, ckpt) == pp.load_plan(named)  # the file beside it
    assert pp.plan_for_checkpoint(None, tmp_path / "sub" / "best.pt") is None
    np.testing.assert_array_equal(pp.apply_postprocessing(preds[1], None), preds[1])


@pytest.mark.parametrize(
    "plan",
    [
        {"format": "x"},
        {"format": pp.PLAN_FORMAT, "version": 1, "steps": [{"kind": "rm", "classes": [1]}]},
        {"format": pp.PLAN_FORMAT, "version": 1, "steps": [{"kind": pp.STEP_KIND,
                                                             "classes": [0]}]},
        {"format": pp.PLAN_FORMAT, "version": 2, "steps": []},
    ],
)
def test_bad_plans_are_refused(plan):
    with pytest.raises(DataError):
        pp.apply_postprocessing(np.zeros((2, 2), np.int64), plan)


def test_plan_of_another_model_is_refused(tmp_path):
    plan = pp.empty_plan(2)
    with pytest.raises(DataError, match="made for 2 classes"):
        pp.apply_postprocessing(np.full((2, 2), 3), plan)
    (tmp_path / "p.json").write_text("[1]")
    with pytest.raises(DataError):
        pp.load_plan(tmp_path / "p.json")
    with pytest.raises(DataError, match="prediction"):
        pp.determine_postprocessing([np.zeros((2, 2), int)], [], 2)
    from unetzoo.errors import ConfigError

    with pytest.raises(ConfigError, match="Reference"):  # a bare label map has no rules
        pp.determine_postprocessing([np.zeros((2, 2), int)], [np.zeros((2, 2), int)], 2)


def test_crossval_plan_from_fold_runs(tmp_path, tiny_root):
    """Two fold runs (random weights: only the plumbing matters) -> one plan, decided on
    every training case once, written beside each checkpoint."""
    import torch

    from ckpt_helpers import save_model_checkpoint
    from unetzoo import create_model
    from unetzoo.data import get_dataset
    from unetzoo.data.folds import make_splits, save_splits
    from unetzoo.engine.checkpoint import read_checkpoint, write_checkpoint
    from unetzoo.engine.inference import predict_volume

    tiny = {"n_train": 3, "n_test": 1, "shape": [4, 32, 32], "seed": 0}  # conftest's phantom
    ds = get_dataset("phantom", tiny_root, **tiny)
    splits = make_splits(ds.cases("train"), n_folds=2)
    ckpts = []
    for fold in (0, 1):
        torch.manual_seed(fold)
        m = create_model("unet", in_channels=ds.in_channels, num_classes=ds.num_classes,
                         base_channels=4).eval()
        run = tmp_path / f"fold{fold}"
        save_splits(run / "splits_final.json", splits)
        cfg = {"dataset": "phantom", "data_root": str(tiny_root),
               "dataset_options": dict(tiny), "fold": fold}
        ckpts.append(save_model_checkpoint(
            run / "checkpoints" / "best.pt", m, class_names=ds.class_names,
            in_channels=ds.in_channels, img_size=32, config=cfg))
    plan = pp.crossval_postprocessing(ckpts, verbose=False)
    assert plan["folds"] == [0, 1] and plan["cases"] == len(ds.cases("train"))
    for c in ckpts:
        assert pp.plan_for_checkpoint(None, c) == pp.load_plan(c.parent / pp.PLAN_FILE)
    # The same decision from the predictions made by hand.
    preds, refs = [], []
    for fold, c in enumerate(ckpts):
        model = read_checkpoint(c).build_model()
        for cid in splits[fold]["val"]:
            case = ds.load_case(cid, "train")
            preds.append(predict_volume(model, case.image, 32))
            refs.append(Reference.of_case(case))
    ref = pp.determine_postprocessing(preds, refs, ds.num_classes, class_names=ds.class_names)
    assert plan["steps"] == ref["steps"]
    # A run trained without --fold cannot take part.
    cfg_less = tmp_path / "plain" / "checkpoints" / "best.pt"
    import dataclasses

    write_checkpoint(dataclasses.replace(read_checkpoint(ckpts[0]), config={}), cfg_less)
    from unetzoo.errors import CheckpointError

    with pytest.raises(CheckpointError, match="without --fold"):
        pp.crossval_postprocessing([cfg_less], write=False, verbose=False)
