"""`unetzoo train` -> `unetzoo test` -> `unetzoo predict` on a tiny phantom, and bad input."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from unetzoo.cli.main import main

TINY = ["--dataset-option", "n_train=3", "--dataset-option", "n_test=1",
        "--dataset-option", "shape=[4, 32, 32]"]


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    from unetzoo.data.phantom import generate_phantom

    base = tmp_path_factory.mktemp("cli")
    ct = generate_phantom(base / "ct", n_train=3, n_test=1, shape=(4, 32, 32), seed=0)
    fundus = generate_phantom(base / "fundus", kind="fundus", n_train=2, n_test=1,
                              shape=(40, 40), seed=0)
    return {"base": base, "ct": ct, "fundus": fundus}


def _train_args(roots, out, *extra):
    return ["train", "--dataset", "phantom", "--data-root", str(roots["ct"]), *TINY,
            "--model", "unet", "--model-option", "base_channels=4", "--img-size", "32",
            "--batch-size", "4", "--max-epochs", "1", "--output", str(out), "--device", "cpu",
            "--no-progress", *extra]


@pytest.fixture(scope="module")
def trained(roots):
    out = roots["base"] / "run"
    assert main(_train_args(roots, out, "--eval-interval", "1")) == 0
    return out


def test_train_writes_report(trained):
    run = trained
    for rel in ("config.yaml", "metrics.csv", "checkpoints/final.pt", "plots/loss.png",
                "report/summary.md", "report/summary.json", "report/cases.csv"):
        assert (run / rel).is_file(), rel
    assert list((run / "report" / "overlays").glob("*.png"))
    summary = json.loads((run / "report" / "summary.json").read_text())
    assert summary["cases"] == 1 and summary["protocol"] == "strict"
    assert 0.0 <= summary["mean_dice"] <= 1.0
    # train's own test scores the final checkpoint and says so
    assert summary["checkpoints"] == [str(run / "checkpoints" / "final.pt")]
    assert (summary["scored"]["file"], summary["scored"]["epoch"]) == ("final.pt", 1)
    with (run / "report" / "cases.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 8 and {r["class_name"] for r in rows} >= {"liver", "aorta"}
    table = (run / "report" / "summary.md").read_text()
    assert "DSC (%)" in table and "HD95 (mm)" in table and "liver" in table
    import yaml

    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["model_options"] == {"base_channels": 4} and cfg["img_size"] == 32


def test_test_command_nifti_tta_transunet(trained, roots, tmp_path):
    import nibabel as nib

    from unetzoo.data import get_dataset

    out = tmp_path / "rep"
    code = main(["test", "--checkpoint", str(trained / "checkpoints" / "final.pt"),
                 "--dataset", "phantom", "--data-root", str(roots["ct"]), "--save-nifti",
                 "--tta", "--protocol", "transunet", "--output", str(out), "--overlays", "1"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["protocol"] == "transunet" and summary["hd95_unit"] == "voxels" and summary["tta"]
    assert summary["scored"]["file"] == "final.pt" and summary["scored"]["select"] is None
    assert "HD95 (voxels)" in (out / "summary.md").read_text()
    ds = get_dataset("phantom", roots["ct"], n_train=3, n_test=1, shape=(4, 32, 32))
    cid = ds.cases("test")[0]
    case = ds.load_case(cid, "test")
    img = nib.load(str(out / "predictions" / f"{cid}.nii.gz"))
    # The label file's own shape, voxel order and affine (issue 14: not the (D, H, W) order).
    ref = nib.load(str(roots["ct"] / "labelsTs" / f"{cid}.nii.gz"))
    assert img.shape == ref.shape == tuple(np.transpose(case.label, np.argsort(case.axes)).shape)
    np.testing.assert_allclose(img.affine, ref.affine, atol=1e-5)
    assert len(list((out / "overlays").glob("*.png"))) == 1


def test_predict_nifti_png_tif(trained, roots, tmp_path):
    import nibabel as nib
    import tifffile
    from PIL import Image

    src = sorted((roots["ct"] / "imagesTs").glob("*.nii.gz"))[0]
    rng = np.random.default_rng(0)
    png = tmp_path / "big.png"  # larger than img_size 32: sliding windows
    Image.fromarray(rng.integers(0, 255, (45, 70), dtype=np.uint8)).save(png)
    tif = tmp_path / "small.tif"  # smaller: resized like a slice
    tifffile.imwrite(str(tif), rng.integers(-200, 300, (20, 24)).astype(np.int16))
    out = tmp_path / "pred"
    code = main(["predict", str(src), str(png), str(tif), "--checkpoint",
                 str(trained / "checkpoints" / "final.pt"), "--output", str(out)])
    assert code == 0
    case = src.name[: -len("_0000.nii.gz")]  # nnU-Net naming: CASE_0000 in, CASE out
    seg = nib.load(str(out / f"{case}.nii.gz"))
    ref = nib.load(str(src))
    assert seg.shape == ref.shape
    np.testing.assert_allclose(seg.affine, ref.affine, atol=1e-6)
    assert int(np.asarray(seg.dataobj).max()) < 9
    assert np.asarray(Image.open(out / "big_seg.png")).shape == (45, 70)
    assert tifffile.imread(str(out / "small_seg.tif")).shape == (20, 24)
    assert (out / "big_overlay.png").is_file() and (out / "small_overlay.png").is_file()
    assert list(out.glob(f"{case}_overlay_slice*.png"))


def _error(capsys, argv) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--model", "no_such_net"], "unknown model"),
        (["--loss", "hinge"], "unknown loss"),
        (["--optimizer", "lion"], "unknown optimizer"),
        (["--model-option", "padding=valid"], "cannot take --img-size 32"),
        (["--model", "swin_unet", "--img-size", "40"], "img"),
        (["--batch-size", "0"], "batch-size"),
        (["--augment", "mixup"], "augmentation recipe"),
    ],
)
def test_train_bad_input(roots, tmp_path, capsys, extra, words):
    err = _error(capsys, _train_args(roots, tmp_path / "r", *extra))
    assert words in err


def test_train_bad_dataset_and_folders(roots, tmp_path, capsys):
    assert "unknown dataset" in _error(capsys, ["train", "--dataset", "imagenet", "--output", str(tmp_path / "a")])
    empty = tmp_path / "empty"
    empty.mkdir()
    err = _error(capsys, ["train", "--dataset", "nnunet", "--data-root", str(empty),
                          "--output", str(tmp_path / "b")])
    assert str(empty) in err
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    err = _error(capsys, _train_args(roots, blocker / "run"))
    assert "not writable" in err


def test_test_and_predict_bad_input(trained, roots, tmp_path, capsys):
    ckpt = str(trained / "checkpoints" / "final.pt")
    err = _error(capsys, ["test", "--checkpoint", ckpt, "--dataset", "drive",
                          "--data-root", str(roots["fundus"])])
    assert "9 classes" in err and "2" in err
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert "corrupt" in _error(capsys, ["test", "--checkpoint", str(bad)])
    png = tmp_path / "x.png"
    from PIL import Image

    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(png)
    assert "corrupt" in _error(capsys, ["predict", str(png), "--checkpoint", str(bad),
                                        "--output", str(tmp_path / "o")])
    assert "does not exist" in _error(capsys, ["predict", str(tmp_path / "none.png"),
                                               "--checkpoint", ckpt, "--output", str(tmp_path / "o")])
    txt = tmp_path / "notes.txt"
    txt.write_text("hi")
    assert "unsupported input" in _error(capsys, ["predict", str(txt), "--checkpoint", ckpt,
                                                  "--output", str(tmp_path / "o")])


def test_resume_from_the_command_line(trained, roots, tmp_path, capsys):
    import shutil

    from unetzoo.engine.checkpoint import read_checkpoint

    run = tmp_path / "again"
    shutil.copytree(trained / "checkpoints", run / "checkpoints")
    code = main(["train", "--resume", "--output", str(run), "--max-epochs", "2", "--no-test",
                 "--no-progress"])
    assert code == 0
    ck = read_checkpoint(run / "checkpoints" / "latest.pt")
    first = read_checkpoint(trained / "checkpoints" / "latest.pt")
    assert ck.epoch == 2 and ck.train_state.iteration == 2 * first.train_state.iteration
    assert ck.config["model_options"] == {"base_channels": 4}  # from the checkpoint
    assert "epoch 2/2" in capsys.readouterr().out
