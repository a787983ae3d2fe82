"""One reader for inputs (issue 14): ``unetzoo predict`` and the demo's uploads decode a
file through the same function (:func:`unetzoo.data.imageio.decode`) and turn it into a
model input through the same function (:func:`unetzoo.engine.inputs.model_input`)."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from unetzoo.data import imageio
from unetzoo.data.imageio import save_image
from unetzoo.data.preprocessing import ct_spec
from unetzoo.deploy import uploads
from unetzoo.engine import inputs
from unetzoo.errors import DataError

NONE = {"kind": "none"}


@pytest.fixture
def decode_calls(monkeypatch):
    """Every call of the one reader, with the file it read."""
    calls: list[str] = []
    real = imageio.decode

    def counting(files, *args, **kwargs):
        calls.append(str(files))
        return real(files, *args, **kwargs)

    monkeypatch.setattr(imageio, "decode", counting)
    return calls


class _Read:
    """``predict``'s reading of one file: the header checked, decoded, normalised."""

    def __init__(self, path, in_channels: int, spec: dict):
        imageio.read_header(path, imageio.Limits())
        dec = imageio.decode(path)
        self.image = inputs.model_input(dec, in_channels, spec)
        self.order, self.affine = dec.order, dec.affine


def _volume(tmp_path, name="vol.nii.gz", zooms=(0.7, 3.0, 0.9)):
    rng = np.random.default_rng(0)
    arr = rng.integers(-1000, 1500, (9, 4, 7)).astype(np.int16)
    aff = np.diag([*zooms, 1.0])
    aff[:3, 3] = (5.0, -3.0, 12.0)
    path = tmp_path / name
    save_image(arr, aff, path)
    return path, arr, aff


def _png(tmp_path, rgb: np.ndarray, name="pic.png"):
    from PIL import Image

    path = tmp_path / name
    Image.fromarray(rgb).save(path)
    return path


def test_demo_and_predict_read_a_volume_through_one_function(tmp_path, decode_calls):
    path, arr, aff = _volume(tmp_path)
    via_predict = _Read(path, 1, ct_spec())
    assert len(decode_calls) == 1
    up = uploads.read_upload(path, name="scan.nii.gz")
    assert len(decode_calls) == 2  # the demo's bytes went through the same reader
    np.testing.assert_array_equal(uploads.to_model_input(up, 1, ct_spec()), via_predict.image)
    assert up.order == via_predict.order and up.order[0] == 1  # j: the largest spacing
    np.testing.assert_array_equal(up.affine, via_predict.affine)
    np.testing.assert_allclose(up.affine, aff, atol=1e-6)  # float32 header
    assert up.spacing == pytest.approx((3.0, 0.9, 0.7))
    assert up.array.dtype == np.int16  # raw intensities, as in the file
    assert up.array.flags.owndata  # not a map of the private file, which is gone
    np.testing.assert_array_equal(up.array[0], np.transpose(arr, up.order))


def test_demo_and_predict_read_a_picture_through_one_function(tmp_path, decode_calls):
    grey = (np.arange(30 * 20) % 253).reshape(30, 20).astype(np.uint8)
    path = _png(tmp_path, grey)
    via_predict = _Read(path, 1, NONE)
    up = uploads.read_upload(path, name="pic.png")
    assert len(decode_calls) == 2
    assert up.array.shape == (1, 1, 30, 20) and up.bit_depth == 255 and up.order is None
    x = uploads.to_model_input(up, 1, NONE)
    np.testing.assert_array_equal(x, via_predict.image)
    np.testing.assert_allclose(x[0, 0], grey / 255.0, rtol=1e-6)


def test_colour_picture_to_grey_as_predict_does(tmp_path):
    """Where the old decoders differed: the demo's grey of a colour PNG was unrounded
    luma (58.7 of 255 for pure green 100), predict's the rounded 8-bit value (59)."""
    rgb = np.zeros((6, 5, 3), np.uint8)
    rgb[..., 1] = 100
    path = _png(tmp_path, rgb)
    via_predict = _Read(path, 1, NONE).image
    via_demo = uploads.to_model_input(uploads.read_upload(path), 1, NONE)
    np.testing.assert_array_equal(via_demo, via_predict)
    assert via_demo[0, 0, 0, 0] == pytest.approx(59 / 255)


def test_vector_nifti_read_by_both(tmp_path):
    """NIfTI's vector-valued layout (X, Y, Z, 1, C), which the demo read, reads in
    predict too: two channels."""
    import nibabel as nib

    vol = np.random.default_rng(1).normal(size=(6, 5, 4, 1, 2)).astype(np.float32)
    path = tmp_path / "vec.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.eye(4)), path)
    via_predict = _Read(path, 2, NONE)
    up = uploads.read_upload(path)
    assert up.array.shape == via_predict.image.shape == (2, 4, 5, 6)
    np.testing.assert_array_equal(uploads.to_model_input(up, 2, NONE), via_predict.image)


@pytest.mark.parametrize("ending", [".nrrd", ".mha"])
def test_nrrd_and_metaimage_uploads(tmp_path, ending):
    """Formats predict reads are demo formats too (by content, whatever the name), and the
    download is in the upload's own format on its grid, as predict writes it."""
    sitk = pytest.importorskip("SimpleITK")

    arr = np.random.default_rng(2).normal(size=(3, 6, 8)).astype(np.float32)  # (z, y, x)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.8, 0.9, 4.0))
    img.SetOrigin((1.0, 2.0, 3.0))
    src = tmp_path / f"vol{ending}"
    sitk.WriteImage(img, str(src))
    liar = tmp_path / "vol.png"
    liar.write_bytes(src.read_bytes())
    up = uploads.read_upload(liar)
    ref = imageio.decode(src)
    assert up.ending == ending and not up.picture and up.order == ref.order
    np.testing.assert_array_equal(up.array, ref.array)
    np.testing.assert_array_equal(up.affine, ref.affine)
    labels = (up.array[0] > 0).astype(np.int64)
    out = uploads.write_label_map(labels, up, uploads.download_dir_under(tmp_path))
    assert out.name == f"vol_labels{ending}"
    back, back_aff, _ = imageio.read_file(out)
    np.testing.assert_array_equal(back, np.transpose(labels, np.argsort(up.order)))
    np.testing.assert_allclose(back_aff, ref.affine, atol=1e-5)


@pytest.mark.parametrize("header", [
    b"NRRD0004\ntype: float\ndimension: 3\nsizes: 2 2 2\nencoding: raw\n"
    b"data file: /etc/hostname\n\n",
    b"ObjectType = Image\nNDims = 3\nDimSize = 2 2 2\nElementType = MET_UCHAR\n"
    b"ElementDataFile = /etc/hostname\n",
])
def test_headers_that_read_another_file_are_refused(tmp_path, header):
    """A detached NRRD / MetaImage header would make the server read a file of its own."""
    p = tmp_path / "evil.nrrd"
    p.write_bytes(header)
    with pytest.raises(DataError, match="reads its voxels from another file"):
        uploads.read_upload(p)


def test_errors_name_the_upload_never_the_server_path(tmp_path):
    vol = np.zeros((5, 5, 3), np.float32)
    vol[1, 1, 1] = np.nan
    path = tmp_path / "stored.nii.gz"
    save_image(vol, np.eye(4), path)
    with pytest.raises(DataError) as predict_err:
        _Read(path, 1, NONE)
    with pytest.raises(DataError) as demo_err:
        uploads.read_upload(path, name="my scan.nii.gz")
    # The same check and words; only the name differs.
    assert str(demo_err.value) == str(predict_err.value).replace(str(path), "my scan.nii.gz")
    broken = tmp_path / "stored.png"
    noise = np.random.default_rng(3).integers(0, 255, (64, 64), dtype=np.uint8)
    whole = _png(tmp_path, noise).read_bytes()
    broken.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match="looks like PNG but cannot be decoded") as err:
        uploads.read_upload(broken, name="slice.png")
    assert "slice.png" in str(err.value) and "unetzoo-upload-" not in str(err.value)
    raw = gzip.decompress(path.read_bytes())
    cut = tmp_path / "cut.nii"
    cut.write_bytes(raw[:-40])  # the header whole, the voxels cut short
    with pytest.raises(DataError, match="looks like NIfTI but cannot be read") as err:
        uploads.read_upload(cut)
    assert "\n" not in str(err.value)  # nibabel's message has a newline: one line here


def test_whole_upload_size_capped_from_the_header(tmp_path, monkeypatch, decode_calls):
    path, _, _ = _volume(tmp_path)
    monkeypatch.setattr(uploads, "MAX_PIXELS", 9 * 4 * 7 - 1)
    with pytest.raises(DataError, match="too large"):
        uploads.read_upload(path)
    assert decode_calls == []  # refused before anything was decoded
