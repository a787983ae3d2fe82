"""NRRD / MetaImage / NIfTI / DICOM-series input and label-map output (the registry of unetzoo.data.imageio).

All files are written by the tests with SimpleITK. The NIfTI reference is written by
SimpleITK (which converts ITK's LPS world to NIfTI's RAS itself) and read by nibabel, so
the LPS -> RAS and (z, y, x) -> (i, j, k) conversions of the readers are checked against an
independent implementation, not against a copy of their own formula.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

sitk = pytest.importorskip("SimpleITK")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _medical_writers import write_dicom_series  # noqa: E402

from unetzoo.data import imageio  # noqa: E402
from unetzoo.errors import DataError  # noqa: E402

SHAPE = (6, 5, 4)  # (i, j, k)
SPACING = (0.8, 1.1, 2.5)
ORIGIN = (-12.5, 30.0, 7.25)  # LPS
_C, _S = math.cos(math.radians(30)), math.sin(math.radians(30))
# A proper rotation about z (det +1), so a DICOM slice normal is its third column.
DIRECTION = (_C, -_S, 0.0, _S, _C, 0.0, 0.0, 0.0, 1.0)


def _volume() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(-1000, 1000, size=SHAPE).astype(np.int16)


def _itk(arr: np.ndarray):
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr.T))  # (i, j, k) -> (z, y, x)
    img.SetSpacing(SPACING)
    img.SetOrigin(ORIGIN)
    img.SetDirection(DIRECTION)
    return img


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("medio")
    img = _itk(_volume())
    out = {}
    for end in (".nii.gz", ".nrrd", ".mha"):
        out[end] = root / f"vol{end}"
        sitk.WriteImage(img, str(out[end]))
    out["dicom"] = write_dicom_series(img, root / "series")
    return out


def test_every_format_reads_to_the_same_array_affine_and_zooms(files):
    ref_arr, ref_aff, ref_zooms = imageio.read_file(files[".nii.gz"])  # nibabel
    assert ref_arr.shape == SHAPE
    np.testing.assert_array_equal(ref_arr, _volume())
    for key in (".nrrd", ".mha", "dicom"):
        arr, aff, zooms = imageio.read_file(files[key])
        assert arr.shape == SHAPE, key
        np.testing.assert_array_equal(arr, ref_arr, err_msg=key)
        np.testing.assert_allclose(aff, ref_aff, atol=1e-4, err_msg=key)
        np.testing.assert_allclose(zooms, ref_zooms, atol=1e-4, err_msg=key)


def test_header_shape_without_decoding(files):
    for key in (".nii.gz", ".nrrd", ".mha", "dicom"):
        assert imageio.read_header(files[key]) == SHAPE, key


def test_affine_maps_indices_to_ras_world(files):
    # Voxel (1, 2, 3) in ITK's LPS world, flipped to RAS, equals affine @ (1, 2, 3, 1).
    _, aff, _ = imageio.read_file(files[".nrrd"])
    lps = np.array(_itk(_volume()).TransformIndexToPhysicalPoint((1, 2, 3)))
    ras = lps * np.array([-1.0, -1.0, 1.0])
    np.testing.assert_allclose(aff @ np.array([1, 2, 3, 1.0]), [*ras, 1.0], atol=1e-6)


def test_a_single_dcm_file_reads_its_whole_series(files):
    one = sorted(files["dicom"].glob("*.dcm"))[2]
    arr, _, _ = imageio.read_file(one)
    assert arr.shape == SHAPE


def _geometry(path: Path):
    img = sitk.ReadImage(str(path))
    return img.GetSize(), img.GetOrigin(), img.GetSpacing(), img.GetDirection()


@pytest.mark.parametrize("key", [".nii.gz", ".nrrd", ".mha", "dicom"])
def test_labels_keep_the_input_geometry_in_the_input_format(files, key, tmp_path):
    arr, aff, _ = imageio.read_file(files[key])
    labels = (arr > 0).astype(np.int64) + (arr > 500)
    ending = imageio.output_ending(files[key])
    assert ending == (".nii.gz" if key == "dicom" else key)
    out = imageio.save_labels(labels, aff, tmp_path / f"case{ending}")
    size, origin, spacing, direction = _geometry(out)
    ref = sitk.ReadImage(str(files[key])) if key != "dicom" else _itk(_volume())
    assert size == ref.GetSize() == SHAPE
    np.testing.assert_allclose(origin, ref.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(spacing, ref.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(direction, ref.GetDirection(), atol=1e-5)
    back, back_aff, _ = imageio.read_file(out)
    np.testing.assert_array_equal(back, labels)
    assert back.dtype == np.uint8
    np.testing.assert_allclose(back_aff, aff, atol=1e-4)


def test_2d_metaimage_round_trip(tmp_path):
    img = sitk.GetImageFromArray(np.arange(12, dtype=np.uint8).reshape(3, 4))  # (y, x)
    img.SetSpacing((0.5, 0.7))
    img.SetOrigin((3.0, -4.0))
    src = tmp_path / "pic.mha"
    sitk.WriteImage(img, str(src))
    arr, aff, zooms = imageio.read_file(src)
    assert arr.shape == (4, 3) and zooms == (0.5, 0.7)
    np.testing.assert_array_equal(arr, np.arange(12).reshape(3, 4).T)
    np.testing.assert_allclose(aff[:3, 3], [-3.0, 4.0, 0.0])  # LPS -> RAS
    out = imageio.save_labels(arr % 3, aff, tmp_path / "lab.mha")
    size, origin, spacing, _ = _geometry(out)
    assert size == (4, 3)
    np.testing.assert_allclose(origin, (3.0, -4.0))
    np.testing.assert_allclose(spacing, (0.5, 0.7))


def test_group_cases_joins_nnunet_channel_files(tmp_path):
    for name in ("a_0000.nii.gz", "a_0001.nii.gz", "b_0000.nrrd", "c.mha", ".hidden.nii.gz",
                 "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    series = tmp_path / "d"
    series.mkdir()
    (series / "x.dcm").write_bytes(b"")
    cases = imageio.group_cases(imageio.expand_inputs([tmp_path]))
    assert list(cases) == ["a", "b", "c", "d"]
    assert [p.name for p in cases["a"]] == ["a_0000.nii.gz", "a_0001.nii.gz"]
    assert cases["d"] == [series]


@pytest.mark.parametrize(
    "names, words",
    [
        (("a_0000.nii.gz", "a_0002.nii.gz"), "without gaps"),
        (("a.nii.gz", "a_0000.nii.gz"), "given twice"),
        (("a.nii.gz", "a.nrrd"), "given twice"),
    ],
)
def test_group_cases_refuses_ambiguous_channels(tmp_path, names, words):
    for name in names:
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(DataError, match=words):
        imageio.group_cases([tmp_path / n for n in names])


def test_channel_files_stack_and_are_checked_for_one_grid(files, tmp_path):
    dec = imageio.decode([files[".nrrd"], files[".mha"]])
    assert dec.array.shape == (2, *(SHAPE[a] for a in dec.order))
    other = tmp_path / "shifted.nrrd"
    img = _itk(_volume())
    img.SetOrigin((0.0, 0.0, 0.0))
    sitk.WriteImage(img, str(other))
    with pytest.raises(DataError, match="co-registered"):
        imageio.decode([files[".nrrd"], other])


def test_bad_files_are_one_line_errors(files, tmp_path):
    broken = tmp_path / "broken.nrrd"
    broken.write_bytes(files[".nrrd"].read_bytes()[:200])
    with pytest.raises(DataError, match="unreadable or truncated") as exc:
        imageio.read_file(broken)
    assert "\n" not in str(exc.value)
    with pytest.raises(DataError, match="unsupported input type"):
        imageio.read_file(tmp_path / "x.txt")
    two = tmp_path / "two"
    img = _itk(_volume())
    write_dicom_series(img, two, "1.2.3.4")
    for f in list(two.glob("*.dcm")):
        f.rename(two / f"s1_{f.name}")
    write_dicom_series(img, two, "1.2.3.5")
    with pytest.raises(DataError, match="2 DICOM series"):
        imageio.read_file(two)
    with pytest.raises(DataError, match="cannot write a label map"):
        imageio.save_labels(np.zeros((2, 2, 2), np.uint8), None, tmp_path / "x.txt")
    with pytest.raises(DataError, match="2-D"):
        imageio.save_labels(np.zeros((2, 2, 2), np.uint8), None, tmp_path / "x.png")


@pytest.mark.parametrize("ending", [".nrrd", ".mha"])
def test_nnunet_folder_in_nrrd_or_mha_reads_as_its_nifti_twin(tmp_path, ending, monkeypatch):
    """dataset.json "file_ending": ".nrrd" / ".mha" (nnU-Net's SimpleITK formats)."""
    import json

    from _data_writers import write_nnunet

    from unetzoo.data import get_dataset

    monkeypatch.setenv("UNETZOO_CACHE", str(tmp_path / "cache"))
    nii = write_nnunet(tmp_path / "nii", channels=("CT", "CT"))
    twin = tmp_path / "twin"
    for f in nii.rglob("*.nii.gz"):
        rel = f.relative_to(nii)
        out = twin / rel.parent / (rel.name[: -len(".nii.gz")] + ending)
        out.parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(sitk.ReadImage(str(f)), str(out))
    meta = json.loads((nii / "dataset.json").read_text())
    (twin / "dataset.json").write_text(json.dumps({**meta, "file_ending": ending}))
    a, b = get_dataset("nnunet", nii), get_dataset("nnunet", twin)
    assert a.cases("train") == b.cases("train") and a.cases("test") == b.cases("test")
    for split in ("train", "test"):
        for cid in a.cases(split):
            ca, cb = a.load_case(cid, split), b.load_case(cid, split)
            np.testing.assert_array_equal(ca.image, cb.image)
            np.testing.assert_array_equal(ca.label, cb.label)
            np.testing.assert_allclose(ca.affine, cb.affine, atol=1e-5)
            assert ca.spacing == pytest.approx(cb.spacing)
