"""The nnU-Net workflow through the CLI on a tiny phantom: `train --fold K` on a stored
5-fold split -> `postprocess` on the folds' validation cases -> `predict` a folder with
several checkpoints (ensemble), the stored plan and `--save-probabilities`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from unetzoo.cli.main import main

PHANTOM = {"n_train": 5, "n_test": 2, "shape": (4, 32, 32), "seed": 0}
TINY = ["--dataset-option", "n_train=5", "--dataset-option", "n_test=2",
        "--dataset-option", "shape=[4, 32, 32]"]


@pytest.fixture(scope="module")
def folds(tmp_path_factory):
    """Folds 0 and 1 trained for one epoch each (a stored split in a private cache)."""
    from unetzoo.data.phantom import generate_phantom

    base = tmp_path_factory.mktemp("nnunet_workflow")
    root = generate_phantom(base / "ct", n_train=5, n_test=2, shape=(4, 32, 32), seed=0)
    mp = pytest.MonkeyPatch()
    mp.setenv("UNETZOO_CACHE", str(base / "cache"))
    runs = []
    for k in (0, 1):
        out = base / f"fold_{k}"
        code = main(["train", "--dataset", "phantom", "--data-root", str(root), *TINY,
                     "--model", "unet", "--model-option", "base_channels=4", "--img-size",
                     "32", "--batch-size", "4", "--max-epochs", "1", "--eval-interval", "1",
                     "--output", str(out), "--device", "cpu", "--no-progress", "--no-test",
                     "--fold", str(k)])
        assert code == 0
        runs.append(out)
    yield {"base": base, "root": root, "runs": runs}
    mp.undo()


def test_fold_runs_use_the_stored_split(folds):
    import yaml

    from unetzoo.data import get_dataset
    from unetzoo.data.folds import load_splits, make_splits

    ds = get_dataset("phantom", folds["root"], **PHANTOM)
    expected = make_splits(ds.cases("train"))  # nnU-Net's seed 12345
    for k, run in enumerate(folds["runs"]):
        assert load_splits(run / "splits_final.json") == expected
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        assert cfg["fold"] == k
    cached = list((folds["base"] / "cache" / "splits").rglob("splits_final.json"))
    assert len(cached) == 1  # created once, reused by the second fold
    assert not list(folds["root"].rglob("splits_final.json"))  # raw folder untouched


def test_bad_fold_is_one_line(folds, capsys):
    code = main(["train", "--dataset", "phantom", "--data-root", str(folds["root"]), *TINY,
                 "--model", "unet", "--model-option", "base_channels=4", "--img-size", "32",
                 "--max-epochs", "1", "--output", str(folds["base"] / "bad"), "--device",
                 "cpu", "--no-progress", "--fold", "7"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fold" in err[0]


def test_postprocess_then_predict_a_folder_with_an_ensemble(folds, tmp_path):
    ckpts = [str(r / "checkpoints" / "best.pt") for r in folds["runs"]]
    args = ["postprocess", "--device", "cpu"]
    for c in ckpts:
        args += ["--checkpoint", c]
    assert main(args) == 0
    from unetzoo.engine.postprocess import PLAN_FILE, apply_postprocessing, load_plan

    plan = load_plan(folds["runs"][0] / "checkpoints" / PLAN_FILE)
    assert plan["folds"] == [0, 1]
    text = (folds["runs"][1] / "checkpoints" / PLAN_FILE).read_text()
    assert json.loads(text, parse_constant=lambda name: pytest.fail(f"non-standard {name}"))

    images = folds["root"] / "imagesTs"
    cases = sorted(p.name[: -len("_0000.nii.gz")] for p in images.glob("*_0000.nii.gz"))
    assert cases

    def predict(out, *extra):
        args = ["predict", str(images), "--output", str(out), "--device", "cpu", "--overlays",
                "0", "--save-probabilities", *extra]
        for c in ckpts:
            args += ["--checkpoint", c]
        assert main(args) == 0
        assert sorted(p.name for p in out.glob("*.nii.gz")) == [f"{c}.nii.gz" for c in cases]
        return out

    from unetzoo.data.imageio import read_file
    from unetzoo.engine.postprocess import STEP_KIND, empty_plan, save_plan

    custom = empty_plan(plan["num_classes"])
    custom["steps"] = [{"kind": STEP_KIND, "classes": [c]} for c in range(1, plan["num_classes"])]
    runs = {
        "stored": (predict(tmp_path / "stored"), plan),
        "custom": (predict(tmp_path / "custom", "--postprocessing",
                           str(save_plan(tmp_path / "custom.json", custom))), custom),
        "none": (predict(tmp_path / "none", "--no-postprocessing"), None),
    }
    for out, used in runs.values():
        for c in cases:
            labels, aff, _ = read_file(out / f"{c}.nii.gz")
            src, src_aff, _ = read_file(images / f"{c}_0000.nii.gz")
            assert labels.shape == src.shape
            np.testing.assert_allclose(aff, src_aff, atol=1e-5)
            with np.load(out / f"{c}.npz") as z:
                probs = z["probabilities"]  # (K, z, y, x), before post-processing
            raw = np.transpose(probs.argmax(0), (2, 1, 0))  # -> (i, j, k)
            np.testing.assert_array_equal(labels, apply_postprocessing(raw, used))


def test_mismatched_ensemble_is_one_line(folds, tmp_path, capsys):
    import dataclasses

    from unetzoo.engine.checkpoint import read_checkpoint, write_checkpoint

    ck = read_checkpoint(folds["runs"][0] / "checkpoints" / "best.pt")
    other = write_checkpoint(dataclasses.replace(
        ck, spec=dataclasses.replace(ck.spec, img_size=64), config={**ck.config, "img_size": 64}),
        tmp_path / "other.pt")
    code = main(["predict", str(folds["root"] / "imagesTs"), "--output", str(tmp_path / "o"),
                 "--device", "cpu", "--checkpoint", str(folds["runs"][0] / "checkpoints" /
                                                         "best.pt"), "--checkpoint", str(other)])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "img_size differs" in err[0]



def test_test_command_ensemble_case_json_and_plan(folds, tmp_path):
    from unetzoo.engine.postprocess import STEP_KIND, empty_plan, save_plan

    ckpts = [str(r / "checkpoints" / "best.pt") for r in folds["runs"]]
    plan = empty_plan(9)
    plan["steps"] = [{"kind": STEP_KIND, "classes": list(range(1, 9))}]
    out = tmp_path / "rep"
    args = ["test", "--output", str(out), "--device", "cpu", "--overlays", "0", "--case-json",
            "--nsd-tolerance", "2", "--postprocessing", str(save_plan(tmp_path / "p.json", plan))]
    for c in ckpts:
        args += ["--checkpoint", c]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["checkpoints"] == ckpts and summary["postprocessing"] == plan["steps"]
    cases = json.loads((out / "cases.json").read_text())
    assert set(cases["metric_per_case"]) == {"phantom_005", "phantom_006"}
    row = cases["metric_per_case"]["phantom_005"]["classes"]["1"]
    assert {"tp", "fp", "fn", "tn", "dice", "iou", "hd95", "nsd"} <= set(row)
    assert cases["metric_per_case"]["phantom_005"]["nsd_tolerance"] == 2.0
    fg = cases["foreground_mean"]["dice"]
    assert (fg is None and summary["mean_dice"] is None) or fg == pytest.approx(
        summary["mean_dice"], abs=1e-6)  # the report's and the per-case file's Dice agree
