"""`unetzoo plan` and a planned `unetzoo train --data-root D` on a tiny nnU-Net raw folder:
the plan lands in plans.json, the run folder and the checkpoint, and `predict` reproduces
the training preprocessing from the checkpoint alone."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from unetzoo.cli.main import main

sys.path.insert(0, str(Path(__file__).parents[1] / "data"))
from _data_writers import write_nnunet  # noqa: E402

TINY = ["--model", "unet", "--model-option", "base_channels=4", "--device", "cpu",
        "--no-progress"]


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    base = tmp_path_factory.mktemp("planned")
    mp = pytest.MonkeyPatch()
    mp.setenv("UNETZOO_CACHE", str(base / "cache"))
    root = write_nnunet(base / "ds", n_train=4, n_test=1, shape=(40, 36, 3),
                        zooms=(0.8, 0.9, 3.0))
    run = base / "run"
    code = main(["train", "--data-root", str(root), *TINY, "--img-size", "32",
                 "--iterations", "2", "--output", str(run), "--no-test"])
    assert code == 0
    yield {"base": base, "root": root, "run": run}
    mp.undo()


def test_plan_command_writes_plans_json(planned, capsys):
    from unetzoo.data.plan import Plan

    out = planned["base"] / "plans.json"
    assert main(["plan", "--data-root", str(planned["root"]), "-o", str(out), "-q"]) == 0
    plan = Plan.load(out)
    assert plan.target_spacing == pytest.approx((0.9, 0.8))
    assert plan.median_shape == (36, 40) and plan.patch_size == 64
    assert plan.normalisation["kind"] == "ct_zscore"
    assert len(plan.fingerprint.cases) == 4
    capsys.readouterr()
    # an existing file is kept: one line, exit 2
    assert main(["plan", "--data-root", str(planned["root"]), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--overwrite" in err[0]


def test_train_records_the_plan_in_the_run_folder_and_checkpoint(planned):
    import yaml

    from unetzoo.engine.checkpoint import read_checkpoint

    run = planned["run"]
    plans = json.loads((run / "plans.json").read_text())
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    ck = read_checkpoint(run / "checkpoints" / "latest.pt").spec
    # --img-size was given: it wins over the planned 64 and the record says so
    assert plans["patch_size"] == cfg["img_size"] == 32
    assert ck.plan.to_dict() == {"target_spacing": plans["target_spacing"],
                                 "patch_size": [32, 32]}
    assert ck.resize == "resample-to-plan"
    # the rest is the plan's: batch, augmentation, normalisation
    assert cfg["batch_size"] == plans["batch_size"] and cfg["augment"] == plans["augment"]
    assert ck.preprocessing == plans["normalisation"]
    assert cfg["dataset_options"]["preprocessing"] == plans["normalisation"]


def test_predict_reproduces_the_training_preprocessing(planned, tmp_path):
    """Labels of `predict` (checkpoint alone) equal those of the model applied to the test
    case exactly as training prepared its data: the reader with the plan's
    normalisation, slices resampled to the plan's spacing (plans.json)."""
    import nibabel as nib

    from unetzoo.data import get_dataset
    from unetzoo.data.geometry import array_to_file
    from unetzoo.data.plan import Plan
    from unetzoo.engine.checkpoint import read_checkpoint
    from unetzoo.engine.inference import predict_volume

    run, root = planned["run"], planned["root"]
    ckpt = run / "checkpoints" / "latest.pt"
    out = tmp_path / "pred"
    assert main(["predict", "--checkpoint", str(ckpt), str(root / "imagesTs"), "-o", str(out),
                 "--overlays", "0", "--device", "cpu", "--backend", "torch"]) == 0
    src = nib.load(root / "imagesTs" / "case_004_0000.nii.gz")
    got = nib.load(out / "case_004.nii.gz")
    assert got.shape == src.shape and np.allclose(got.affine, src.affine)

    plan = Plan.load(run / "plans.json")
    ds = get_dataset("nnunet", root, preprocessing=plan.normalisation)
    case = ds.load_case("case_004", "test")
    model = read_checkpoint(ckpt).build_model("cpu")
    labels = predict_volume(model, case.image, plan.patch_size, plan=plan.slice_plan,
                            spacing=case.spacing)
    want = array_to_file(labels, None, case.axes)[0]
    np.testing.assert_array_equal(np.asarray(got.dataobj), want)

    # `unetzoo test` of the checkpoint alone (the data reopened from its config) saves the
    # same label map
    report = tmp_path / "report"
    assert main(["test", "--checkpoint", str(ckpt), "--output", str(report), "--save-nifti",
                 "--overlays", "0", "--device", "cpu", "--backend", "torch"]) == 0
    tested = nib.load(report / "predictions" / "case_004.nii.gz")
    np.testing.assert_array_equal(np.asarray(tested.dataobj), want)


def test_budget_flags_need_a_planned_run(planned, capsys):
    code = main(["train", "--data-root", str(planned["root"]), *TINY, "--recipe", "transunet",
                 "--iterations", "5", "--output", str(planned["base"] / "no")])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--iterations" in err[0]


def test_a_planned_run_resumes_with_its_plan(planned):
    """`--resume` keeps the checkpoint's plan (resampled slices, planned normalisation)."""
    from unetzoo.data.plan import plan_training
    from unetzoo.engine.checkpoint import read_checkpoint
    from unetzoo.engine.config import resolve_config
    from unetzoo.engine.trainer import train

    run = planned["base"] / "resumed"
    flags = {"model": "unet", "model_options": {"base_channels": 4}, "max_epochs": 2,
             "img_size": 32, "output": str(run), "data_root": str(planned["root"]),
             "device": "cpu", "progress": False, "test": False}
    ds, values = plan_training(None, planned["root"], {}, {}, flags)
    train(resolve_config(ds.recipe, values, flags), dataset=ds, stop_after_epochs=1)
    first = read_checkpoint(run / "checkpoints" / "latest.pt").spec
    assert main(["train", "--resume", "--output", str(run), "--no-progress"]) == 0
    ck = read_checkpoint(run / "checkpoints" / "latest.pt")
    assert ck.epoch == 2 and ck.spec.plan == first.plan
    assert ck.spec.plan.to_dict() == {"target_spacing": pytest.approx([0.9, 0.8]),
                                      "patch_size": [32, 32]}
    assert ck.spec.preprocessing == first.preprocessing
    assert ck.spec.preprocessing["kind"] == "ct_zscore"


def test_an_exported_planned_model_predicts_the_same_labels(planned, tmp_path):
    """The plan travels in the ONNX file's metadata: `predict --onnx` resamples as the
    checkpoint does."""
    import nibabel as nib

    ckpt = planned["run"] / "checkpoints" / "latest.pt"
    onnx = tmp_path / "model.onnx"
    assert main(["export", "--checkpoint", str(ckpt), "-o", str(onnx), "--no-verify"]) == 0
    outs = {}
    for flag, model in (("--checkpoint", ckpt), ("--onnx", onnx)):
        out = tmp_path / flag.strip("-")
        assert main(["predict", flag, str(model), str(planned["root"] / "imagesTs"), "-o",
                     str(out), "--overlays", "0", "--device", "cpu"]) == 0
        outs[flag] = np.asarray(nib.load(out / "case_004.nii.gz").dataobj)
    np.testing.assert_array_equal(outs["--onnx"], outs["--checkpoint"])
