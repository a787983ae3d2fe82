"""No raw tracebacks: each input that used to end in a Python traceback now ends in one
``error: ...`` line and exit status 2 (issue 13, "Raw tracebacks"). Tiny data, seconds each."""

from __future__ import annotations

import errno
import json
import os

import numpy as np
import pytest
import torch
import yaml
from _h4b_inputs import CLASSES, cli_error, ct_volume, save_tiny_checkpoint, save_volume

from unetzoo.cli.main import main
from unetzoo.errors import UnetzooError

NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
TINY = ["--dataset-option", "n_train=3", "--dataset-option", "n_test=1",
        "--dataset-option", "shape=[4, 32, 32]"]



@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ck") / "tiny.pt")


@pytest.fixture(scope="module")
def phantom_root(tmp_path_factory):
    from unetzoo.data.phantom import generate_phantom

    return generate_phantom(tmp_path_factory.mktemp("ph") / "ct", n_train=3, n_test=1,
                            shape=(4, 32, 32), seed=0)


@pytest.fixture
def png(tmp_path):
    from PIL import Image

    p = tmp_path / "x.png"
    Image.fromarray(np.full((20, 20), 100, np.uint8)).save(p)
    return p


def _train(root, out, *extra):
    return ["train", "--dataset", "phantom", "--data-root", root, *TINY, "--model", "unet",
            "--model-option", "base_channels=4", "--img-size", "32", "--batch-size", "4",
            "--max-epochs", "1", "--output", out, "--device", "cpu", "--no-progress",
            "--no-test", *extra]


# ------------------------------------------------------------ --device cuda without a GPU
@NO_GPU
@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:3"])
@pytest.mark.parametrize("command", ["train", "predict", "test"])
def test_cuda_without_gpu(tmp_path, capsys, ckpt, png, phantom_root, command, device):
    train = _train(phantom_root, tmp_path / "run")
    i = train.index("--device")
    del train[i : i + 2]
    argv = {
        "train": train,
        "predict": ["predict", png, "--checkpoint", ckpt, "--output", tmp_path / "o"],
        "test": ["test", "--checkpoint", ckpt, "--output", tmp_path / "o"],
    }[command]
    line = cli_error(capsys, [*argv, "--device", device])
    assert "no CUDA GPU" in line and "--device cpu" in line
    assert not (tmp_path / "run").exists() and not (tmp_path / "o").exists()


# ------------------------------------------------------------ empty volumes
def test_zero_slice_volume_predict(tmp_path, capsys, ckpt):
    p = save_volume(np.zeros((0, 20, 20), np.float32), tmp_path / "empty.nii.gz")
    line = cli_error(capsys, ["predict", p, "--checkpoint", ckpt, "--output", tmp_path / "o"])
    assert "empty.nii.gz" in line and "empty axis" in line


def _nnunet(root, test_shape=(12, 10, 3)):
    from unetzoo.data.imageio import save_image

    for d in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (root / d).mkdir(parents=True)
    aff = np.diag([0.8, 0.9, 3.0, 1.0])
    rng = np.random.default_rng(0)
    for i in range(2):
        save_image(rng.normal(0, 100, (12, 10, 3)).astype(np.float32), aff,
                   root / "imagesTr" / f"c{i}_0000.nii.gz")
        save_image(rng.integers(0, 3, (12, 10, 3)).astype(np.uint8), aff,
                   root / "labelsTr" / f"c{i}.nii.gz")
    save_image(np.zeros(test_shape, np.float32), aff, root / "imagesTs" / "t0_0000.nii.gz")
    save_image(np.zeros(test_shape, np.uint8), aff, root / "labelsTs" / "t0.nii.gz")
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {n: i for i, n in enumerate(CLASSES)},
        "numTraining": 2, "file_ending": ".nii.gz"}))
    return root


def test_zero_slice_test_volume(tmp_path, capsys, ckpt):
    root = _nnunet(tmp_path / "D", test_shape=(12, 10, 0))
    line = cli_error(capsys, ["test", "--checkpoint", ckpt, "--dataset", "nnunet",
                               "--data-root", root, "--output", tmp_path / "rep", "--device", "cpu"])
    assert "t0_0000.nii.gz" in line and ("no voxels" in line or "shape" in line)


# ------------------------------------------------------------ a damaged slice cache
@pytest.mark.parametrize("which", ["img", "lab"])
def test_truncated_cache_npy_is_rebuilt(tmp_path, which):
    from unetzoo.data import get_dataset

    root = _nnunet(tmp_path / "D")
    ds = get_dataset("nnunet", root)
    want = ds.load_case("c0", "train")
    npy = ds.cache_dir / "train" / f"c0.{which}.npy"
    npy.write_bytes(npy.read_bytes()[:100])  # a kill or a full disk mid-copy
    ds = get_dataset("nnunet", root)
    got = ds.load_case("c0", "train")
    np.testing.assert_array_equal(got.image, want.image)
    np.testing.assert_array_equal(got.label, want.label)
    npy.write_bytes(npy.read_bytes()[:100])
    item = get_dataset("nnunet", root).slice_dataset("train", cases=["c0"])[1]
    np.testing.assert_array_equal(item["label"].numpy(), want.label[1])


# ------------------------------------------------------------ --resume with other options
def test_resume_with_other_model_option(tmp_path, capsys, phantom_root):
    run = tmp_path / "run"
    assert main([str(a) for a in _train(phantom_root, run)]) == 0
    capsys.readouterr()
    argv = _train(phantom_root, run, "--resume")
    argv[argv.index("base_channels=4")] = "base_channels=8"
    argv[argv.index("--max-epochs") + 1] = "2"
    line = cli_error(capsys, argv)
    assert "base_channels: 4 -> 8" in line


# ------------------------------------------------------------ YAML values of the wrong type
@pytest.mark.parametrize(
    "values, needle",
    [
        ({"model_options": 5}, "model_options"),
        ({"model_options": [1, 2]}, "model_options"),
        ({"dataset_options": "abc"}, "dataset_options"),
        ({"loss_weights": "abc"}, "loss-weights"),
        ({"loss_weights": [0.5, "x"]}, "loss-weights"),
        ({"loss_weights": [-1, 2]}, "loss-weights"),
        ({"loss_weights": ["0.4", "0.6"]}, "loss-weights"),
        ({"loss_weights": {"ce": "x"}}, "loss-weights"),
        ({"deep_supervision_weights": {"a": 1}}, "deep-supervision-weights"),
        ({"val_fraction": "abc"}, "val-fraction"),
        ({"amp": "yes"}, "amp"),
        ({"seed": 1.5}, "seed"),
        ({"num_workers": "two"}, "num-workers"),
        ({"device": "tpu9"}, "tpu9"),
        ({"model": 7}, "model"),
    ],
    ids=lambda v: "-".join(map(str, v)) if isinstance(v, dict) else None,
)
def test_yaml_values_of_the_wrong_type(tmp_path, capsys, phantom_root, values, needle):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(values))
    line = cli_error(capsys, ["train", "--config", cfg, "--dataset", "phantom", "--data-root",
                               phantom_root, *TINY, "--output", tmp_path / "run", "--no-progress"])
    assert needle in line
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------ damaged checkpoints
@pytest.mark.parametrize("img_size", [0, -5, 2.5, "abc", None, 10**9])
@pytest.mark.parametrize("command", ["predict", "test", "export"])
def test_checkpoint_with_bad_img_size(tmp_path, capsys, png, command, img_size):
    p = save_tiny_checkpoint(tmp_path / "bad.pt", img_size=img_size)
    argv = {
        "predict": ["predict", png, "--checkpoint", p, "--output", tmp_path / "o"],
        "test": ["test", "--checkpoint", p, "--output", tmp_path / "o"],
        "export": ["export", "--checkpoint", p, "--output", tmp_path / "m.onnx"],
    }[command]
    line = cli_error(capsys, argv)
    assert "bad.pt" in line and "img_size" in line


@pytest.mark.parametrize(
    "stored",
    [{"base_channels": 10**6}, {"base_channels": 2**40}, {"base_channels": -3},
     {"base_channels": 4.5}, {"base_channels": "wide"}, {"in_channels": "abc"},
     {"num_classes": 2.5}],
    ids=["1e6", "2^40", "negative", "fraction", "string", "in-channels-str", "classes-2.5"],
)
@pytest.mark.parametrize("command", ["predict", "export"])
def test_checkpoint_with_absurd_width(tmp_path, capsys, png, command, stored):
    p = save_tiny_checkpoint(tmp_path / "wide.pt", model_options_stored=stored)
    argv = {
        "predict": ["predict", png, "--checkpoint", p, "--output", tmp_path / "o"],
        "export": ["export", "--checkpoint", p, "--output", tmp_path / "m.onnx"],
    }[command]
    line = cli_error(capsys, argv)
    assert any(w in line for w in ("base_channels", "do not fit", "in_channels", "inconsistent"))


# ------------------------------------------------------------ disk full
def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("target", ["label-png", "label-nifti", "overlay"])
def test_disk_full_while_writing_predictions(tmp_path, capsys, monkeypatch, ckpt, png, target):
    inp = png
    if target == "label-nifti":
        inp = save_volume(ct_volume((2, 20, 20)), tmp_path / "v.nii.gz")
        import nibabel

        monkeypatch.setattr(nibabel, "save", _enospc)
    elif target == "label-png":
        from PIL import Image

        monkeypatch.setattr(Image.Image, "save", _enospc)
    else:
        import unetzoo.engine.predict_cases as pred  # the CLI's predictor

        monkeypatch.setattr(pred, "overlay_png", _enospc)
    line = cli_error(capsys, ["predict", inp, "--checkpoint", ckpt, "--output", tmp_path / "o"])
    assert "disk full at" in line and str(tmp_path / "o") in line
    if target != "overlay":  # no half-written label map is left behind
        assert not [p for p in (tmp_path / "o").iterdir() if p.name.startswith(("v.", "x_"))]


def test_disk_full_while_writing_the_report(tmp_path, capsys, monkeypatch, phantom_root):
    from pathlib import Path

    run = tmp_path / "run"
    assert main([str(a) for a in _train(phantom_root, run)]) == 0
    capsys.readouterr()
    real = os.replace  # every report file is written beside its place, then renamed

    def full(src, dst, *args, **kwargs):
        if Path(dst).name.startswith("summary"):
            _enospc()
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", full)
    line = cli_error(capsys, ["test", "--checkpoint", run / "checkpoints" / "best.pt",
                               "--data-root", phantom_root,
                               "--output", tmp_path / "rep", "--device", "cpu", "--overlays", "0"])
    assert "disk full" in line


# ------------------------------------------------------------ paths that name the wrong thing
def test_prepare_out_naming_a_file(tmp_path, capsys):
    f = tmp_path / "notes.txt"
    f.write_text("mine")
    line = cli_error(capsys, ["prepare", "phantom", "--output", f])
    assert "notes.txt" in line
    assert f.read_text() == "mine"


@pytest.mark.parametrize("form", ["slash", "existing-dir"])
def test_export_out_naming_a_folder(tmp_path, capsys, ckpt, form):
    d = tmp_path / "exports"
    if form == "existing-dir":
        d.mkdir()
    out = f"{d}/" if form == "slash" else str(d)
    line = cli_error(capsys, ["export", "--checkpoint", ckpt, "--output", out, "--no-verify"])
    assert "names a folder" in line and "cannot be exported" not in line


def test_export_out_under_a_file(tmp_path, capsys, ckpt):
    f = tmp_path / "file"
    f.write_text("x")
    line = cli_error(capsys, ["export", "--checkpoint", ckpt, "--output", f / "m.onnx",
                               "--no-verify"])
    assert "is a file" in line and "cannot be exported" not in line


def test_export_out_where_nothing_can_be_written(tmp_path, capsys, ckpt):
    line = cli_error(capsys, ["export", "--checkpoint", ckpt, "--output", "/proc/m.onnx",
                               "--no-verify"])
    assert "cannot write there" in line and "cannot be exported" not in line


@pytest.mark.parametrize("option", ["n_train=abc", "shape=[4, 32, x]", "seed=1.5", "shape=5"])
def test_phantom_option_of_the_wrong_type(tmp_path, capsys, option):
    line = cli_error(capsys, ["train", "--dataset-option", option, "--output",
                               tmp_path / "run", "--device", "cpu", "--no-progress"])
    assert "phantom" in line and option.split("=")[0] in line


# ------------------------------------------------------------ the demo's pixel spacing
@pytest.mark.parametrize("spacing", [1e308, float("inf"), float("nan"), -1.0, 1e-320])
def test_demo_pixel_spacing_out_of_range(tmp_path, ckpt, spacing):
    from PIL import Image

    from unetzoo.deploy.webapp import DemoBackend

    img = tmp_path / "s.png"
    Image.fromarray(np.full((20, 20), 100, np.uint8)).save(img)
    gt = tmp_path / "gt.png"
    lab = np.zeros((20, 20), np.uint8)
    lab[5:10, 5:10] = 1
    Image.fromarray(lab).save(gt)
    backend = DemoBackend([ckpt])
    with pytest.raises(UnetzooError) as ei:
        backend.segment(img, backend.choices()[0], gt, pixel_spacing=spacing)
    assert "spacing" in str(ei.value) and "\n" not in str(ei.value)
