"""Issue 26 item 3 and the silent-wrong reader cases: the checkpoint's fingerprint guards
its inputs, ``test`` matches class names, and readers no longer misread pictures,
TIFF stacks, JPEG masks, header-less NIfTI spacing or a null preprocessing spec.
Every case: the bad input gives one line (or a warning line) or the right answer."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from unetzoo.data.nnunet import NnUNetDataset
from unetzoo.data.preprocessing import intensity_fingerprint, intensity_mismatch
from unetzoo.engine import evaluation
from unetzoo.engine.predict_cases import predict_cases
from unetzoo.engine.spec import InferenceSpec
from unetzoo.engine.training_inputs import training_intensity, training_orientation
from unetzoo.errors import CheckpointError, DataError, UnetzooError

RNG = np.random.default_rng(0)


def one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert isinstance(exc_info.value, UnetzooError) and "\n" not in msg and msg
    return msg


class LevelNet(nn.Module):
    """Fixed 1x1 convolution: intensity ~0 -> background, ~1 -> class 2, ~2 -> class 1
    (model classes background, a, b: "a" is the bright structure)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([0.0, 20.0, 5.0]).view(3, 1, 1, 1))
            self.conv.bias.copy_(torch.tensor([0.0, -30.0, -2.5]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def mri(shape=(20, 20, 12)) -> np.ndarray:
    """An MRI-like volume: non-negative, background 0, tissue ~300-900."""
    arr = np.zeros(shape, np.float32)
    arr[3:-3, 3:-3, 2:-2] = RNG.uniform(300, 900, (shape[0] - 6, shape[1] - 6, shape[2] - 4))
    return arr


def ct(shape=(20, 20, 12)) -> np.ndarray:
    """A CT-like volume in HU: air -1000 around a body of ~-100..300 with bone."""
    arr = np.full(shape, -1000.0, np.float32)
    arr[3:-3, 3:-3, 2:-2] = RNG.uniform(-100, 300, (shape[0] - 6, shape[1] - 6, shape[2] - 4))
    arr[8:10, 8:10, 4:6] = 1200.0
    return arr


def spec(**extra) -> InferenceSpec:
    return InferenceSpec.from_dict({
        "model": {"name": "level", "options": {}},
        "class_names": ["background", "a", "b"], "in_channels": 1, "img_size": 16,
        "preprocessing": {"kind": "zscore"}, **extra,
    })


def save(arr, path, affine=None):
    nib.save(nib.Nifti1Image(arr, np.eye(4) if affine is None else affine), str(path))
    return path


# ----------------------------------------------------------------- the intensity fingerprint
def test_ct_into_an_mri_model_warns_and_strict_refuses(tmp_path, capsys):
    s = spec(intensity=intensity_fingerprint([mri()[None]], "MRI"))
    f = save(ct(), tmp_path / "ct.nii.gz")
    predict_cases([f], LevelNet(), s, tmp_path / "o1", overlays=0, verbose=False)
    warn = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("warning:")]
    assert len(warn) == 1 and "negative intensities" in warn[0] and "(MRI)" in warn[0]
    with pytest.raises(DataError) as exc:
        predict_cases([f], LevelNet(), s, tmp_path / "o2", overlays=0, verbose=False,
                      strict_inputs=True)
    assert "--strict-inputs" in one_line(exc)
    assert not (tmp_path / "o2" / "ct.nii.gz").exists()


def test_mri_into_a_ct_model_and_a_matching_input(tmp_path, capsys):
    s = spec(preprocessing={"kind": "ct", "window": [-125, 275]},
             intensity=intensity_fingerprint([ct()[None], ct()[None]], "CT"))
    predict_cases([save(mri(), tmp_path / "mr.nii.gz")], LevelNet(), s, tmp_path / "o",
                  overlays=0, verbose=False)
    err = capsys.readouterr().err
    assert "no negative intensities" in err and "(CT)" in err
    predict_cases([save(ct(), tmp_path / "ct.nii.gz")], LevelNet(), s, tmp_path / "o2",
                  overlays=0, verbose=False, strict_inputs=True)  # the right kind: silent
    assert "warning" not in capsys.readouterr().err


def test_12_bit_data_in_16_bits_against_a_16_bit_model(tmp_path, capsys):
    """A picture model trained on full-range 16-bit images ('range' 0..65535) given 12-bit
    data in a 16-bit PNG sees it 1/16 as bright: one warning line names the factor."""
    full = [np.linspace(0, 1, 256, dtype=np.float32).reshape(1, 16, 16)]
    s = spec(preprocessing={"kind": "range", "low": 0, "high": 65535},
             intensity=intensity_fingerprint(full, "image", "normalised"))
    png = tmp_path / "x.png"
    Image.fromarray(np.linspace(0, 4095, 256).reshape(16, 16).astype(np.uint16)).save(png)
    predict_cases([png], LevelNet(), s, tmp_path / "o", overlays=0, verbose=False)
    err = capsys.readouterr().err
    assert "0.0625x" in err and "12-bit" in err


def test_old_checkpoints_check_nothing(tmp_path, capsys):
    assert spec().intensity is None and spec().orientation is None
    predict_cases([save(ct(), tmp_path / "ct.nii.gz")], LevelNet(), spec(), tmp_path / "o",
                  overlays=0, verbose=False, strict_inputs=True)
    assert "warning" not in capsys.readouterr().err


def test_mismatch_rules():
    fp_mri = intensity_fingerprint([mri()[None]], "MRI")
    fp_ct = intensity_fingerprint([ct()[None]], "CT")
    assert intensity_mismatch(mri()[None] * 5, fp_mri, scale_free=True) is None  # scanner scale
    assert intensity_mismatch(ct()[None], fp_ct) is None  # a CT into a CT model
    assert "range" in intensity_mismatch(ct()[None] * 20, fp_ct)
    with pytest.raises(CheckpointError):
        spec(intensity={"channels": [{"p0_5": "x"}]})


# ------------------------------------------------------------------------ datasets for test
def nnunet(root, image, label, labels, channel="T1", affine=None, extra=None):
    for d in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for split, tag in (("Tr", "case_000"), ("Ts", "case_001")):
        save(image, root / f"images{split}" / f"{tag}_0000.nii.gz", affine)
        save(label.astype(np.uint8), root / f"labels{split}" / f"{tag}.nii.gz", affine)
    for name, (img, lab, aff) in (extra or {}).items():
        save(img, root / "imagesTs" / f"{name}_0000.nii.gz", aff)
        save(lab.astype(np.uint8), root / "labelsTs" / f"{name}.nii.gz", aff)
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": channel}, "labels": labels, "numTraining": 1,
        "file_ending": ".nii.gz"}))
    return NnUNetDataset(root)


def levels(shape=(16, 16, 6)):
    """Intensities 0 / 1 / 2 in blocks, and the block map in model numbering."""
    img = np.zeros(shape, np.float32)
    img[2:7, 2:14] = 2.0  # model class "a"
    img[9:14, 2:14] = 1.0  # model class "b"
    model_labels = np.select([img == 2, img == 1], [1, 2], 0)
    return img, model_labels


def run(ds, s, tmp_path, net=None, **kw):
    from unetzoo.engine.checkpoint import Checkpoint

    return evaluation.run_test(Checkpoint(spec=s, weights={}), dataset=ds,
                               out_dir=tmp_path / "report", overlays=0,
                               verbose=False, backend="torch", device="cpu",
                               postprocessing=None, model=(net or LevelNet()).eval(), **kw)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("UNETZOO_CACHE", str(tmp_path / "cache"))


def test_test_maps_classes_by_name(tmp_path, capsys):
    img, model_labels = levels()
    swapped = np.select([model_labels == 1, model_labels == 2], [2, 1], 0)  # "a" is 2 there
    ds = nnunet(tmp_path / "d", img, swapped, {"background": 0, "b": 1, "a": 2}, "noNorm")
    s = spec(preprocessing={"kind": "none"})
    summary = run(ds, s, tmp_path)
    assert "classes matched by name" in capsys.readouterr().err
    assert summary["mean_dice"] > 0.9  # without the match: 0 (a scored against b)


def test_test_refuses_other_class_names(tmp_path):
    img, model_labels = levels()
    ds = nnunet(tmp_path / "d", img, model_labels, {"background": 0, "liver": 1, "b": 2},
                "noNorm")
    with pytest.raises(CheckpointError) as exc:
        run(ds, spec(preprocessing={"kind": "none"}), tmp_path)
    assert "liver" in one_line(exc)


def test_test_warns_on_another_modality_and_strict_refuses(tmp_path, capsys):
    img, model_labels = levels()
    ds = nnunet(tmp_path / "d", ct(img.shape), model_labels,
                {"background": 0, "a": 1, "b": 2}, "CT")
    s = spec(intensity=intensity_fingerprint([mri(img.shape)[None]], "MRI"))
    run(ds, s, tmp_path)
    err = capsys.readouterr().err
    assert "is CT but the model was trained on MRI" in err and "negative intensities" in err
    with pytest.raises(DataError) as exc:
        run(ds, s, tmp_path, strict_inputs=True, overwrite=True)
    assert "--strict-inputs" in one_line(exc)


def test_trainer_records_orientation_and_fingerprint(tmp_path):
    img, model_labels = levels()
    aff = np.diag([1.0, 1.0, 1.0, 1.0])
    ds = nnunet(tmp_path / "d", mri(img.shape), model_labels,
                {"background": 0, "a": 1, "b": 2}, "T1", aff)
    assert training_orientation(ds, ds.cases("train")) == "SAR"
    fp = training_intensity(ds, ds.cases("train"))
    assert fp["modality"] == "MRI" and fp["channels"][0]["p0_5"] == 0.0
    assert fp["channels"][0]["p99_5"] > 800
    s = spec(orientation="SAR", intensity=fp)
    assert InferenceSpec.from_dict(s.to_dict()) == s  # survives the checkpoint


# ----------------------------------------------------------------------- silent-wrong readers
def test_preprocessing_null_is_refused():
    with pytest.raises(CheckpointError) as exc:
        spec(preprocessing=None)
    assert "preprocessing is null" in one_line(exc)
    old = spec().to_dict()
    del old["preprocessing"]  # an old flat metadata without the key: inputs already normalised
    assert InferenceSpec.from_dict(old).preprocessing == {"kind": "none"}


def header_less(arr, path):
    """A NIfTI with pixdim 0 and neither qform nor sform (the header bytes patched:
    nibabel would not write it)."""
    import gzip
    import io
    import struct

    buf = io.BytesIO()
    img = nib.Nifti1Image(arr, np.eye(4))
    img.header.set_data_offset(352)
    buf.write(img.header.binaryblock)
    buf.write(b"\0" * (352 - buf.tell()))
    buf.write(np.asarray(arr, dtype=img.get_data_dtype()).tobytes(order="F"))
    raw = bytearray(buf.getvalue())
    raw[80:92] = struct.pack("<3f", 0.0, 0.0, 0.0)  # pixdim[1:4]
    raw[252:256] = struct.pack("<2h", 0, 0)  # qform_code, sform_code
    path.write_bytes(gzip.compress(bytes(raw)) if path.name.endswith(".gz") else bytes(raw))
    return path


def test_pixdim_zero_is_voxels_and_never_mixed_with_mm(tmp_path):
    from unetzoo.data.imageio import read_file

    img, model_labels = levels()
    _, _, zooms = read_file(header_less(img, tmp_path / "h.nii"))
    assert all(np.isnan(zooms))  # unknown, not 1 mm
    # alone: HD95 in voxels
    root = tmp_path / "alone"
    nnunet(root, img, model_labels, {"background": 0, "a": 1, "b": 2}, "noNorm")
    for split, tag in (("Tr", "case_000"), ("Ts", "case_001")):
        header_less(img, root / f"images{split}" / f"{tag}_0000.nii.gz")
        header_less(model_labels.astype(np.uint8), root / f"labels{split}" / f"{tag}.nii.gz")
    s = spec(preprocessing={"kind": "none"})
    assert run(NnUNetDataset(root), s, tmp_path)["hd95_unit"] == "voxels"
    # beside a case with a real spacing: one line, never a mean of mm and voxels
    mixed = tmp_path / "mixed"
    nnunet(mixed, img, model_labels, {"background": 0, "a": 1, "b": 2}, "noNorm",
           np.diag([2.0, 2.0, 2.0, 1.0]))
    header_less(img, mixed / "imagesTs" / "case_002_0000.nii.gz")
    header_less(model_labels.astype(np.uint8), mixed / "labelsTs" / "case_002.nii.gz")
    with pytest.raises(DataError) as exc:
        run(NnUNetDataset(mixed), s, tmp_path / "m")
    assert "cannot be averaged" in one_line(exc)


def test_12_bit_png_is_read_at_full_brightness(tmp_path):
    from unetzoo.data.imageio import decode
    from unetzoo.engine.inputs import model_input

    a8 = np.linspace(0, 255, 256).reshape(16, 16).astype(np.uint8)
    a12 = (a8.astype(np.int64) * 4095 // 255).astype(np.uint16)
    Image.fromarray(a8).save(tmp_path / "a8.png")
    Image.fromarray(a12).save(tmp_path / "a12.png")
    x8 = model_input(decode(tmp_path / "a8.png"), 1, {"kind": "ct"})
    x12 = model_input(decode(tmp_path / "a12.png"), 1, {"kind": "ct"})
    assert decode(tmp_path / "a12.png").bit_depth == 4095
    assert np.abs(x8 - x12).max() < 2e-3  # not 1/16 as bright


def test_exif_orientation_is_applied(tmp_path):
    from unetzoo.data.imageio import load_image
    from unetzoo.data.imageio.pictures import PictureIO

    arr = RNG.integers(0, 255, (10, 16), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(arr).save(tmp_path / "p.png", exif=exif)
    shown = np.asarray(Image.fromarray(arr).transpose(Image.Transpose.ROTATE_270))
    assert np.array_equal(PictureIO.read(tmp_path / "p.png")[0], shown)
    assert np.array_equal(load_image(tmp_path / "p.png"), shown)
    assert PictureIO.shape(tmp_path / "p.png") == shown.shape


def test_tiff_stack_is_refused(tmp_path):
    import tifffile

    from unetzoo.data.imageio.pictures import PictureIO

    tifffile.imwrite(tmp_path / "s.tif", RNG.integers(0, 255, (3, 12, 12), dtype=np.uint8),
                     photometric="minisblack")
    with pytest.raises(DataError) as exc:
        PictureIO.read(tmp_path / "s.tif")
    assert "3 pages" in one_line(exc)
    rgb = RNG.integers(0, 255, (12, 12, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    assert np.array_equal(PictureIO.read(tmp_path / "rgb.tif")[0], rgb)  # one page, RGB: fine


def test_jpeg_masks_are_refused(tmp_path):
    from unetzoo.data.folder import FolderDataset

    for d in ("images", "masks"):
        (tmp_path / d).mkdir()
    for i in range(2):
        Image.fromarray(RNG.integers(0, 255, (16, 16), dtype=np.uint8)).save(
            tmp_path / "images" / f"c{i}.png")
        mask = np.zeros((16, 16), np.uint8)
        mask[4:12, 4:12] = 255
        Image.fromarray(mask).save(tmp_path / "masks" / f"c{i}.jpg", quality=75)
    with pytest.raises(DataError) as exc:
        FolderDataset(tmp_path)
    assert "JPEG" in one_line(exc) and "PNG" in one_line(exc)


# ------------------------------------------------------------------- training -> CLI, end to end
def test_trained_checkpoint_guards_predict_and_test(tmp_path, capsys):
    """A 1-epoch run on the CT phantom records the orientation and the CT fingerprint;
    `predict` of an MRI-like volume warns in one line (exit 0), `--strict-inputs` refuses
    it (exit 2, one line) and writes nothing."""
    from unetzoo.cli.main import main
    from unetzoo.data.phantom import generate_phantom
    from unetzoo.engine.checkpoint import read_checkpoint
    from unetzoo.engine.config import resolve_config
    from unetzoo.engine.trainer import train

    opts = {"n_train": 2, "n_test": 1, "shape": [4, 32, 32], "seed": 0}
    root = tmp_path / "phantom"
    generate_phantom(root, **opts)
    cfg = resolve_config("phantom", None, {
        "dataset": "phantom", "data_root": str(root), "dataset_options": opts,
        "model": "unet", "model_options": {"base_channels": 4}, "img_size": 32,
        "batch_size": 2, "max_epochs": 1, "eval_interval": 1, "output": str(tmp_path / "run"),
        "progress": False, "test": False, "device": "cpu"})
    train(cfg)
    ckpt_path = tmp_path / "run" / "checkpoints" / "best.pt"
    spec = read_checkpoint(ckpt_path).spec
    assert spec.orientation and spec.intensity["modality"] == "CT"
    assert spec.intensity["channels"][0]["p0_5"] < -500  # air in HU
    vol = save(mri((32, 32, 8)), tmp_path / "mr.nii.gz", np.diag([2.5, 2.5, 5.0, 1.0]))
    capsys.readouterr()
    argv = ["predict", str(vol), "--checkpoint", str(ckpt_path), "--backend", "torch",
            "--overlays", "0"]
    assert main([*argv, "--output", str(tmp_path / "o1")]) == 0
    warn = [ln for ln in capsys.readouterr().err.splitlines() if "training" in ln]
    assert len(warn) == 1 and warn[0].startswith("warning:") and "(CT)" in warn[0]
    assert main([*argv, "--output", str(tmp_path / "o2"), "--strict-inputs"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("error:") and "--strict-inputs" in err[0]
    assert not (tmp_path / "o2" / "mr.nii.gz").exists()


def test_header_less_nifti_is_not_reoriented_by_a_guessed_affine(tmp_path):
    """pixdim 0 and no qform/sform: neither size nor orientation is known, so the file's
    own slicing rule is kept (nibabel's fallback affine is a guess, not the anatomy)."""
    arr = RNG.uniform(0, 2, (12, 10, 8)).astype(np.float32)
    f = header_less(arr, tmp_path / "h.nii.gz")
    outs = []
    for n, orientation in enumerate(("RAS", None)):
        s = spec(preprocessing={"kind": "none"}, orientation=orientation)
        predict_cases([f], LevelNet(), s, tmp_path / f"o{n}", overlays=0, verbose=False)
        outs.append(np.asarray(nib.load(str(tmp_path / f"o{n}" / "h.nii.gz")).dataobj))
    assert outs[0].shape == arr.shape and np.array_equal(outs[0], outs[1])
