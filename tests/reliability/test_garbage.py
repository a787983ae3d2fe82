"""No silent garbage: inputs that used to give a wrong answer with exit 0 now give the right
answer or one clear line (issue 13, "Silent garbage"). Tiny data, seconds each."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _h4b_inputs import CLASSES, IMG_SIZE, cli_error, ct_volume, save_tiny_checkpoint, save_volume

from unetzoo.cli.main import main
from unetzoo.errors import CheckpointError, ConfigError, DataError, ModelError, UnetzooError


def _one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert isinstance(exc_info.value, UnetzooError) and "\n" not in msg and msg
    return msg



@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ck") / "tiny.pt")


# ------------------------------------------------------------ 8-bit images vs the CT spec
def test_png_of_a_ct_slice_is_read_like_the_nifti_slice(ckpt, tmp_path):
    """A PNG rendering of a windowed CT slice gets the demo's rule (pixels / 255), not the
    HU window: its model input and labels match the NIfTI slice's."""
    from PIL import Image

    from unetzoo.data.imageio import decode
    from unetzoo.data.preprocessing import ct_spec, normalize
    from unetzoo.engine.inputs import model_input
    from unetzoo.engine.predict import predict_files

    # HU values on the 8-bit grid of the window, so the PNG holds the slice exactly and
    # any disagreement is the reader's, not the quantisation's.
    lo, hi = ct_spec()["window"]
    pixels = (normalize(ct_volume((3, IMG_SIZE, IMG_SIZE)), ct_spec()) * 255).round()
    hu = (lo + (hi - lo) * pixels / 255).astype(np.float32)
    z = 1
    nii = save_volume(hu, tmp_path / "vol.nii.gz")
    png = tmp_path / "slice.png"
    Image.fromarray(pixels[z].astype(np.uint8)).save(png)
    jpg = tmp_path / "slice.jpg"
    Image.fromarray(pixels[z].astype(np.uint8)).save(jpg, quality=100)

    spec = ct_spec()
    vol = model_input(decode(nii), 1, spec)  # (C, D, H, W), file k axis -> D
    for path in (png, jpg):
        img = model_input(decode(path), 1, spec)
        assert img.shape == (1, 1, IMG_SIZE, IMG_SIZE)
        np.testing.assert_allclose(img[0, 0], vol[0, z], atol=2.5 / 255)

    recs = predict_files([nii, png], ckpt, tmp_path / "out", device="cpu", overlays=0,
                         verbose=False)
    import nibabel as nib

    vol_lab = np.transpose(np.asarray(nib.load(recs[0]["output"]).dataobj), (2, 1, 0))[z]
    png_lab = np.asarray(Image.open(recs[1]["output"]))
    assert (vol_lab == png_lab).mean() > 0.99


def test_16bit_png_scaled_by_its_depth(tmp_path):
    from PIL import Image

    from unetzoo.data.imageio import decode
    from unetzoo.data.preprocessing import ct_spec
    from unetzoo.engine.inputs import model_input

    arr = np.linspace(0, 65535, 16 * 16).reshape(16, 16).astype(np.uint16)
    p = tmp_path / "deep.png"
    Image.fromarray(arr).save(p)
    img = model_input(decode(p), 1, ct_spec())
    assert img.min() == 0.0 and img.max() == pytest.approx(1.0)


# ------------------------------------------------------------ non-finite input and weights
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_voxel_is_refused(ckpt, tmp_path, bad):
    vol = ct_volume((3, 40, 40)).astype(np.float32)
    vol[1, 5, 7] = bad
    p = save_volume(vol, tmp_path / "nan.nii.gz")
    from unetzoo.engine.predict import predict_files

    with pytest.raises(DataError) as ei:
        predict_files([p], ckpt, tmp_path / "out", device="cpu", overlays=0, verbose=False)
    msg = _one_line(ei)
    assert "nan.nii.gz" in msg and "NaN or Inf" in msg and "1 voxel" in msg


def test_nonfinite_float_tif_is_refused(ckpt, tmp_path):
    import tifffile

    arr = np.zeros((20, 20), np.float32)
    arr[3, 3] = np.nan
    p = tmp_path / "f.tif"
    tifffile.imwrite(p, arr)
    from unetzoo.engine.predict import predict_files

    with pytest.raises(DataError) as ei:
        predict_files([p], ckpt, tmp_path / "out", device="cpu", overlays=0, verbose=False)
    assert "NaN or Inf" in _one_line(ei)


def test_complex_volume_and_page_stack_are_refused(ckpt, tmp_path):
    """Complex voxels were cast to their real part and a 5-page TIFF read as 30 channels."""
    import tifffile

    from unetzoo.data.imageio import save_image
    from unetzoo.engine.predict import predict_files

    cplx = tmp_path / "c.nii.gz"
    save_image(np.ones((20, 20, 2), np.complex64), None, cplx)
    stack = tmp_path / "s.tif"
    tifffile.imwrite(stack, np.zeros((5, 30, 30), np.uint8))
    for p, needle in ((cplx, "complex64"), (stack, "not one 2-D image")):
        with pytest.raises(DataError) as ei:
            predict_files([p], ckpt, tmp_path / "o", device="cpu", overlays=0, verbose=False)
        assert needle in _one_line(ei)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_weights_are_refused(tmp_path, capsys, bad):
    def poison(state):
        next(v for k, v in state.items() if k.endswith("weight")).view(-1)[0] = bad

    p = save_tiny_checkpoint(tmp_path / "nan.pt", state_fn=poison)
    img = tmp_path / "x.png"
    from PIL import Image

    Image.fromarray(np.zeros((20, 20), np.uint8)).save(img)
    line = cli_error(capsys, ["predict", str(img), "--checkpoint", str(p), "--output",
                               str(tmp_path / "o"), "--device", "cpu"])
    assert "NaN or Inf" in line and "nan.pt" in line
    from unetzoo.engine.checkpoint import read_checkpoint

    with pytest.raises(CheckpointError):
        read_checkpoint(p).build_model()


# ------------------------------------------------------------ zero-width intensity ranges
@pytest.mark.parametrize(
    "spec",
    [
        {"kind": "ct", "window": [100.0, 100.0]},
        {"kind": "ct", "window": [275.0, -125.0]},
        {"kind": "ct", "window": [0.0, float("nan")]},
        {"kind": "range", "low": 5.0, "high": 5.0},
        {"kind": "percentile", "lower": 50.0, "upper": 50.0},
        {"kind": "percentile", "lower": -1.0, "upper": 99.0},
        {"kind": "channels", "channels": [{"kind": "range", "low": 0, "high": 0}]},
    ],
    ids=["ct-zero", "ct-reversed", "ct-nan", "range-zero", "pct-equal", "pct-outside", "nested"],
)
def test_degenerate_preprocessing_is_refused(tmp_path, capsys, spec):
    from unetzoo.data.preprocessing import normalize

    with pytest.raises(DataError) as ei:
        normalize(np.zeros((1, 4, 4), np.float32), spec)
    _one_line(ei)
    p = save_tiny_checkpoint(tmp_path / "spec.pt", preprocessing=spec)
    vol = save_volume(ct_volume((2, 20, 20)), tmp_path / "v.nii.gz")
    line = cli_error(capsys, ["predict", str(vol), "--checkpoint", str(p), "--output",
                               str(tmp_path / "o"), "--device", "cpu"])
    assert "spec.pt" in line and "preprocessing" in line


# ------------------------------------------------------------ --device
@pytest.mark.parametrize("device", ["tpu9", "gpu", "cuda:x", "cuda:-1", "CPU0", ""])
def test_unknown_device_is_refused(device):
    from unetzoo.engine.distributed import resolve_device

    with pytest.raises(ConfigError) as ei:
        resolve_device(device)
    assert "cpu, cuda, cuda:N, mps" in _one_line(ei)


@pytest.mark.parametrize("device", ["cpu", "CPU", None])
def test_cpu_device_accepted(device):
    from unetzoo.engine.distributed import resolve_device

    dev = resolve_device(device)
    assert dev.type in ("cpu", "cuda")
    if device:
        assert dev == torch.device("cpu")


def test_device_tpu9_in_config_is_refused():
    from unetzoo.engine.config import resolve_config

    with pytest.raises(ConfigError) as ei:
        resolve_config("phantom", None, {"device": "tpu9"})
    assert "tpu9" in _one_line(ei)


@pytest.mark.parametrize("command", ["train", "predict", "test", "bench"])
def test_cli_device_tpu9_is_refused(tmp_path, capsys, ckpt, command):
    args = {
        "bench": ["bench", "--models", "unet", "--tiny", "--in-process"],
        "train": ["train", "--output", str(tmp_path / "run"), "--no-progress"],
        "predict": ["predict", str(tmp_path / "x.png"), "--checkpoint", str(ckpt),
                    "--output", str(tmp_path / "o")],
        "test": ["test", "--checkpoint", str(ckpt), "--output", str(tmp_path / "o")],
    }[command]
    line = cli_error(capsys, [*args, "--device", "tpu9"])
    assert "tpu9" in line
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------ model option types
@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"num_classes": 2.7}, "num_classes"),
        ({"in_channels": 1.5}, "in_channels"),
        ({"num_classes": True}, "num_classes"),
        ({"base_channels": 2.5}, "base_channels"),
        ({"base_channels": True}, "base_channels"),
        ({"base_channels": "4"}, "base_channels"),
        ({"base_channels": float("nan")}, "base_channels"),
        ({"bilinear": 3}, "bilinear"),
    ],
    ids=["classes-2.7", "channels-1.5", "classes-bool", "width-2.5", "width-bool",
         "width-str", "width-nan", "bool-int"],
)
def test_bad_option_types_are_refused(kwargs, needle):
    from unetzoo import create_model

    kwargs = dict(kwargs)
    kwargs.setdefault("base_channels", 4)
    with pytest.raises(ModelError) as ei:
        create_model("unet", **kwargs)
    assert needle in _one_line(ei)


def test_integral_floats_become_ints():
    from unetzoo import create_model

    m = create_model("unet", num_classes=3.0, base_channels=4.0)
    assert m.unetzoo_options["base_channels"] == 4
    assert type(m.unetzoo_options["base_channels"]) is int
    assert type(m.unetzoo_options["num_classes"]) is int
    assert m.eval()(torch.zeros(1, 1, 16, 16)).shape[1] == 3


def test_tuple_options_are_checked_elementwise():
    from unetzoo import create_model

    with pytest.raises(ModelError) as ei:
        create_model("resunetpp", widths=(4, 8.5, 8, 16, 16))
    assert "widths" in _one_line(ei)
    m = create_model("resunetpp", widths=[4, 8, 8, 16, 16])
    assert all(type(w) is int for w in m.unetzoo_options["widths"])


def test_cli_model_option_fraction_is_refused(tmp_path, capsys):
    line = cli_error(capsys, ["train", "--model", "unet", "--model-option", "base_channels=2.5",
                               "--output", str(tmp_path / "run"), "--device", "cpu",
                               "--no-progress"])
    assert "base_channels" in line and "2.5" in line


# ------------------------------------------------------------ export --opset
@pytest.mark.parametrize("opset", ["3", "17", "99", "-1"])
def test_export_opset_out_of_range_is_refused(ckpt, tmp_path, capsys, opset):
    out = tmp_path / "m.onnx"
    line = cli_error(capsys, ["export", "--checkpoint", str(ckpt), "--output", str(out),
                               "--opset", opset, "--no-verify"])
    assert "--opset" in line and "18" in line
    assert not out.exists()


def test_export_opset_is_honoured(ckpt, tmp_path, capsys):
    import onnx

    from unetzoo.cli.export import SUPPORTED_OPSETS

    opset = max(SUPPORTED_OPSETS)
    out = tmp_path / "m.onnx"
    assert main(["export", "--checkpoint", str(ckpt), "--output", str(out), "--opset", str(opset),
                 "--no-verify"]) == 0
    model = onnx.load(str(out))
    got = {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")}
    assert got == {opset}


# ------------------------------------------------------------ label / image geometry
def _nnunet(root, label_affine):
    from unetzoo.data.imageio import save_image

    for d in ("imagesTr", "labelsTr"):
        (root / d).mkdir(parents=True)
    aff = np.diag([0.8, 0.9, 3.0, 1.0])
    rng = np.random.default_rng(0)
    for i in range(2):
        save_image(rng.normal(0, 100, (12, 10, 3)).astype(np.float32), aff,
                   root / "imagesTr" / f"c{i}_0000.nii.gz")
        save_image(rng.integers(0, 3, (12, 10, 3)).astype(np.uint8),
                   label_affine if i == 1 else aff, root / "labelsTr" / f"c{i}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {n: i for i, n in enumerate(CLASSES)},
        "numTraining": 2, "file_ending": ".nii.gz"}))
    return root


@pytest.mark.parametrize(
    "label_affine, ok",
    [
        (np.diag([0.8, 0.9, 3.0, 1.0]), True),
        (np.diag([0.8, 0.9, 3.0, 1.0]) + np.diag([1e-5, 0, 0, 0]), True),
        (np.diag([0.8, 0.9, 6.0, 1.0]), False),  # other spacing
        (np.diag([-0.8, 0.9, 3.0, 1.0]), False),  # flipped axis
        (np.array([[0.8, 0, 0, 5.0], [0, 0.9, 0, 0], [0, 0, 3.0, 0], [0, 0, 0, 1]]), False),
    ],
    ids=["same", "within-tolerance", "spacing", "flip", "shifted-origin"],
)
def test_label_affine_must_match_image(tmp_path, label_affine, ok):
    from unetzoo.data import get_dataset

    ds = get_dataset("nnunet", _nnunet(tmp_path / "D", label_affine))
    if ok:
        assert ds.load_case("c1", "train").label is not None
        return
    with pytest.raises(DataError) as ei:
        ds.load_case("c1", "train")
    msg = _one_line(ei)
    assert "c1.nii.gz" in msg and "affine" in msg


# ------------------------------------------------------------ huge 2-D inputs
def test_huge_png_is_refused_before_decoding(ckpt, tmp_path, capsys):
    """8000 x 8000 ran 8.5 min to a 12 GB peak; now it is refused from the header."""
    import struct
    import zlib

    p = tmp_path / "huge.png"
    # A valid PNG header for 8000 x 8000 grey pixels whose data is cut short: the size check
    # must come from the header, before any decoding.
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    p.write_bytes(b"\x89PNG\r\n\x1a\n"
                  + chunk(b"IHDR", struct.pack(">IIBBBBB", 8000, 8000, 8, 0, 0, 0, 0))
                  + chunk(b"IDAT", zlib.compress(b"\x00" * 8001)) + chunk(b"IEND", b""))
    line = cli_error(capsys, ["predict", str(p), "--checkpoint", str(ckpt), "--output",
                               str(tmp_path / "o"), "--device", "cpu"])
    assert "8000 x 8000" in line and "--max-pixels" in line
    # Inputs are checked before the checkpoint is even read.
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    line = cli_error(capsys, ["predict", str(p), "--checkpoint", str(junk), "--output",
                               str(tmp_path / "o"), "--device", "cpu"])
    assert "8000 x 8000" in line and not (tmp_path / "o").exists()


def test_max_pixels_applies_to_volumes_and_images(ckpt, tmp_path):
    from PIL import Image

    from unetzoo.engine.predict import predict_files

    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(img)
    vol = save_volume(ct_volume((2, 20, 20)), tmp_path / "v.nii.gz")
    for p in (img, vol):
        with pytest.raises(DataError) as ei:
            predict_files([p], ckpt, tmp_path / "o", device="cpu", overlays=0, verbose=False,
                          max_pixels=300)
        assert "--max-pixels" in _one_line(ei)
    recs = predict_files([img], ckpt, tmp_path / "o2", device="cpu", overlays=0, verbose=False,
                         max_pixels=1600)
    assert len(recs) == 1


def test_large_image_sliding_window_shows_progress(ckpt, tmp_path, capsys):
    from PIL import Image

    from unetzoo.engine.predict import predict_files

    img = tmp_path / "wide.png"
    Image.fromarray(np.zeros((IMG_SIZE * 3, IMG_SIZE * 3), np.uint8)).save(img)
    predict_files([img], ckpt, tmp_path / "o", device="cpu", overlays=0, verbose=True)
    err = capsys.readouterr().err
    # 25 windows of 32 px; not a terminal: at most one line per 10 %, ending at 100 %.
    lines = [ln for ln in err.splitlines() if "windows" in ln]
    assert 2 <= len(lines) <= 11 and lines[-1].endswith("25/25 windows (100 %)")
