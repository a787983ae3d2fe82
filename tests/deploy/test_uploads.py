"""Upload validation: type by content, size limits, decoding errors, safe download names."""

from __future__ import annotations

import gzip
import io

import numpy as np
import pytest

from unetzoo.data.imageio import Decoded
from unetzoo.deploy import uploads
from unetzoo.errors import DataError


def test_types_by_content_not_name(phantom_files, tmp_path):
    for key, kind in (("png", ".png"), ("tif", ".tif"), ("nii", ".nii")):
        # The same bytes under a misleading name decode the same way.
        liar = tmp_path / f"renamed_{key}.jpg"
        liar.write_bytes(phantom_files[key].read_bytes())
        a = uploads.read_upload(phantom_files[key])
        b = uploads.read_upload(liar)
        assert a.ending == b.ending == kind
        np.testing.assert_array_equal(a.array, b.array)


def test_png_and_jpeg_arrays(tmp_path):
    from PIL import Image

    grey = (np.arange(48 * 40) % 251).reshape(48, 40).astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "g.png")
    up = uploads.read_upload(tmp_path / "g.png")
    assert up.array.shape == (1, 1, 48, 40) and up.bit_depth == 255
    np.testing.assert_array_equal(up.array[0, 0], grey)
    rgb = np.stack([grey, grey // 2, grey // 3], -1)
    Image.fromarray(rgb).save(tmp_path / "c.jpg", quality=95)
    up = uploads.read_upload(tmp_path / "c.jpg")
    assert up.ending == ".jpg" and up.array.shape == (3, 1, 48, 40)
    x = uploads.to_model_input(up, 1, {"kind": "none"})  # colour -> grey, scaled to [0, 1]
    assert x.shape == (1, 1, 48, 40) and 0.0 <= x.min() and x.max() <= 1.0


def test_nifti_volume_orientation_and_spacing(phantom_files, phantom_case):
    up = uploads.read_upload(phantom_files["nii"])
    assert not up.picture and up.bit_depth is None
    np.testing.assert_array_equal(up.array[0], phantom_case[0])  # (D, H, W) as generated
    assert up.spacing == pytest.approx((5.0, 2.5, 2.5))
    # Raw HU go through the checkpoint's CT window.
    from unetzoo.data.preprocessing import ct_spec, normalize

    x = uploads.to_model_input(up, 1, ct_spec())
    np.testing.assert_allclose(x[0], normalize(phantom_case[0], ct_spec()))


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"", "empty"),
        (b"hello, I am text", "not a supported file"),
        (b"%PDF-1.7\n" + b"x" * 400, "not a supported file"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "cannot be decoded"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 40, "cannot be decoded"),
        (b"II*\x00" + b"\x00" * 40, "cannot be decoded"),
        (gzip.compress(b"just some text inside a gzip", mtime=0), "holds no NIfTI"),
        (b"\x1f\x8b\x08\x00broken", "corrupt"),
    ],
)
def test_unreadable_uploads(tmp_path, payload, message):
    p = tmp_path / "upload.png"
    p.write_bytes(payload)
    with pytest.raises(DataError, match=message):
        uploads.read_upload(p)


def test_truncated_nifti(phantom_files, tmp_path):
    raw = gzip.decompress(phantom_files["nii"].read_bytes())
    p = tmp_path / "cut.nii"
    p.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="NIfTI but cannot be read"):
        uploads.read_upload(p)


def test_size_limits(phantom_files, tmp_path):
    with pytest.raises(DataError, match="over the .* upload limit"):
        uploads.read_upload(phantom_files["png"], max_bytes=100)
    # A small gzip that inflates past the limit is refused before it is all in memory.
    bomb = tmp_path / "bomb.nii.gz"
    bomb.write_bytes(gzip.compress(b"\x00" * (4 * 2**20)))
    with pytest.raises(DataError, match="decompressed size exceeds"):
        uploads.read_upload(bomb, max_bytes=2**16)


def test_channel_mismatch_messages(tmp_path):
    import nibabel as nib
    import tifffile

    none = {"kind": "none"}
    p = tmp_path / "four.tif"
    # A 4-channel planar TIFF is RGB + alpha to predict's reader (alpha dropped), so the
    # demo reads it so too; three colours do not fit a two-channel model.
    tifffile.imwrite(p, np.zeros((4, 20, 20), np.uint8))
    up = uploads.read_upload(p)
    with pytest.raises(DataError, match="3 channel.*takes 2"):
        uploads.to_model_input(up, 2, none)
    v = tmp_path / "two.nii"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 3, 2), np.float32), np.eye(4)), v)
    up = uploads.read_upload(v)
    assert up.array.shape == (2, 3, 8, 8)
    with pytest.raises(DataError, match="volume has 2 channel"):
        uploads.to_model_input(up, 1, none)
    # A grey volume is never silently replicated to three channels.
    g = tmp_path / "grey.nii"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 3), np.float32), np.eye(4)), g)
    with pytest.raises(DataError, match="1 channel.*takes 3"):
        uploads.to_model_input(uploads.read_upload(g), 3, none)


def test_safe_names_and_downloads(tmp_path):
    assert uploads.safe_stem("../../etc/passwd") == "passwd"
    assert uploads.safe_stem("..\\..\\boot.ini") == "boot.ini"
    assert uploads.safe_stem("case 01 (final).nii.gz") == "case_01_final_"
    assert uploads.safe_stem("....") == "upload"
    up = Decoded(np.zeros((1, 1, 4, 4), np.float32), where="../../../tmp/evil")
    folder = uploads.download_dir_under(tmp_path)
    out = uploads.write_label_map(np.ones((1, 4, 4), np.int64), up, folder)
    assert out.parent == folder.resolve() and out.name == "evil_labels.png"


def test_mask_values_and_shape(tmp_path):
    from PIL import Image

    m = np.zeros((10, 12), np.uint8)
    m[2:5, 3:7] = 255
    Image.fromarray(m).save(tmp_path / "m.png")
    got = uploads.read_mask(tmp_path / "m.png", (1, 10, 12), num_classes=2)
    assert set(np.unique(got)) == {0, 1}  # 0/255 masks map to 0/1 for binary models
    with pytest.raises(DataError, match="outside the model's classes"):
        uploads.read_mask(tmp_path / "m.png", (1, 10, 12), num_classes=4)
    with pytest.raises(DataError, match="shape"):
        uploads.read_mask(tmp_path / "m.png", (1, 10, 13), num_classes=2)


def test_sniff_magic_bytes():
    buf = io.BytesIO()
    from PIL import Image

    Image.fromarray(np.zeros((2, 2), np.uint8)).save(buf, format="PNG")
    assert uploads.sniff(buf.getvalue()) == "png"
    assert uploads.sniff(b"MM\x00*rest") == "tiff"
    assert uploads.sniff(b"\x1f\x8brest") == "gzip"
    assert uploads.sniff(b"GIF89a") is None
