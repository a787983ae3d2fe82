"""Every kind of bad input gives one DataError that names the file and says what to do."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from _data_writers import write_drive, write_folder, write_nnunet, write_synapse

from unetzoo.data import get_dataset
from unetzoo.errors import DataError, UnetzooError


def _read_all(ds, split="train"):
    items = ds.slice_dataset(split)
    for i in range(len(items)):
        items[i]


def _one_line(exc_info):
    msg = str(exc_info.value)
    assert "\n" not in msg and isinstance(exc_info.value, UnetzooError)
    return msg


def test_missing_file_listed(tmp_path):
    root = write_synapse(tmp_path / "S")
    (root / "train_npz" / "case0006_slice001.npz").unlink()
    with pytest.raises(DataError) as ei:
        get_dataset("synapse", root)
    msg = _one_line(ei)
    assert "case0006_slice001" in msg and "train.txt" in msg and "restore" in msg


def test_missing_key(tmp_path):
    root = write_synapse(tmp_path / "S")
    bad = root / "train_npz" / "case0005_slice002.npz"
    np.savez(bad, image=np.zeros((16, 16), np.float32), mask=np.zeros((16, 16)))
    ds = get_dataset("synapse", root)
    with pytest.raises(DataError) as ei:
        _read_all(ds)
    msg = _one_line(ei)
    assert str(bad) in msg and "'label'" in msg and "mask" in msg


def test_missing_h5_key(tmp_path):
    root = write_synapse(tmp_path / "S")
    p = root / "test_vol_h5" / "case0001.npy.h5"
    with h5py.File(p, "a") as f:
        del f["label"]
    with pytest.raises(DataError, match="missing key 'label'") as ei:
        get_dataset("synapse", root).load_case("case0001", "test")
    assert str(p) in _one_line(ei)


def test_shape_mismatch(tmp_path):
    root = write_synapse(tmp_path / "S")
    bad = root / "train_npz" / "case0005_slice000.npz"
    np.savez(bad, image=np.zeros((16, 16), np.float32), label=np.zeros((16, 15), np.float32))
    with pytest.raises(DataError) as ei:
        _read_all(get_dataset("synapse", root))
    msg = _one_line(ei)
    assert str(bad) in msg and "(16, 16)" in msg and "(16, 15)" in msg


def test_label_outside_classes(tmp_path):
    root = write_synapse(tmp_path / "S")
    bad = root / "train_npz" / "case0006_slice000.npz"
    lab = np.zeros((16, 16), np.float32)
    lab[3, 3] = 12
    np.savez(bad, image=np.zeros((16, 16), np.float32), label=lab)
    with pytest.raises(DataError) as ei:
        _read_all(get_dataset("synapse", root))
    msg = _one_line(ei)
    assert str(bad) in msg and "[12]" in msg and "9 declared classes" in msg


def test_non_integer_label(tmp_path):
    root = write_synapse(tmp_path / "S")
    bad = root / "train_npz" / "case0006_slice000.npz"
    np.savez(bad, image=np.zeros((16, 16), np.float32), label=np.full((16, 16), 0.5, np.float32))
    with pytest.raises(DataError, match="non-integer"):
        _read_all(get_dataset("synapse", root))


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nan_or_inf_in_image(tmp_path, value):
    root = write_synapse(tmp_path / "S")
    bad = root / "train_npz" / "case0005_slice001.npz"
    img = np.zeros((16, 16), np.float32)
    img[2, 2] = value
    np.savez(bad, image=img, label=np.zeros((16, 16), np.float32))
    with pytest.raises(DataError) as ei:
        _read_all(get_dataset("synapse", root))
    assert str(bad) in _one_line(ei) and "NaN or Inf" in str(ei.value)


def test_nan_in_nifti(tmp_path):
    import nibabel as nib

    root = write_nnunet(tmp_path / "D")
    p = root / "imagesTr" / "case_001_0000.nii.gz"
    img = nib.load(p)
    arr = np.asarray(img.dataobj).copy()
    arr[1, 1, 1] = np.nan
    nib.save(nib.Nifti1Image(arr, img.affine), p)
    with pytest.raises(DataError, match="NaN or Inf") as ei:
        get_dataset("nnunet", root).slice_dataset("train")
    assert str(p) in _one_line(ei)


def test_empty_dataset_and_split(tmp_path):
    (tmp_path / "S" / "train_npz").mkdir(parents=True)
    with pytest.raises(DataError, match="no .npz/.h5 files"):
        get_dataset("synapse", tmp_path / "S")
    (tmp_path / "E").mkdir()
    with pytest.raises(DataError, match="empty synapse dataset"):
        get_dataset("synapse", tmp_path / "E")
    root = write_synapse(tmp_path / "S2")
    (root / "lists" / "lists_Synapse" / "train.txt").write_text("\n")
    with pytest.raises(DataError, match="empty list file"):
        get_dataset("synapse", root)
    ds = get_dataset("synapse", write_synapse(tmp_path / "S3"))
    with pytest.raises(DataError, match="no split 'val'"):
        ds.slice_dataset("val")
    with pytest.raises(DataError, match="empty case list"):
        ds.slice_dataset("train", cases=[])
    with pytest.raises(DataError, match="not in split"):
        ds.slice_dataset("train", cases=["case0099"])
    with pytest.raises(DataError, match="no images/ and masks/"):
        get_dataset("folder", tmp_path / "E")
    with pytest.raises(DataError, match="no training cases"):
        (tmp_path / "N" / "imagesTr").mkdir(parents=True)
        (tmp_path / "N" / "dataset.json").write_text(
            json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0, "a": 1}}))
        get_dataset("nnunet", tmp_path / "N")


def test_truncated_files(tmp_path):
    root = write_synapse(tmp_path / "S")
    p = root / "train_npz" / "case0005_slice000.npz"
    p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(DataError, match="unreadable or truncated npz") as ei:
        _read_all(get_dataset("synapse", root))
    assert str(p) in _one_line(ei)
    root = write_synapse(tmp_path / "S2")
    h = root / "test_vol_h5" / "case0001.npy.h5"
    h.write_bytes(h.read_bytes()[:200])
    with pytest.raises(DataError, match="unreadable or truncated HDF5") as ei:
        get_dataset("synapse", root)
    assert str(h) in _one_line(ei)
    nn = write_nnunet(tmp_path / "D")
    q = nn / "labelsTr" / "case_000.nii.gz"
    q.write_bytes(q.read_bytes()[:60])
    with pytest.raises(DataError, match="unreadable or truncated NIfTI") as ei:
        get_dataset("nnunet", nn).load_case("case_000", "train")
    assert str(q) in _one_line(ei)
    d = write_drive(tmp_path / "DRIVE")
    g = d / "training" / "1st_manual" / "22_manual1.gif"
    g.write_bytes(g.read_bytes()[:20])
    with pytest.raises(DataError, match="unreadable or truncated image") as ei:
        get_dataset("drive", d).load_case("22", "train")
    assert str(g) in _one_line(ei)


def test_dataset_json_not_matching_files(tmp_path):
    root = write_nnunet(tmp_path / "D")
    meta = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**meta, "numTraining": 5}))
    with pytest.raises(DataError, match="numTraining is 5 but 2"):
        get_dataset("nnunet", root)
    (root / "dataset.json").write_text(json.dumps({**meta, "channel_names": {"0": "CT", "1": "PET"}}))
    with pytest.raises(DataError, match="case_000_0001.nii.gz") as ei:
        get_dataset("nnunet", root)
    assert "2 channel" in _one_line(ei)
    (root / "dataset.json").write_text(json.dumps({**meta, "labels": {"background": 0, "organ": 2}}))
    with pytest.raises(DataError, match="consecutive"):
        get_dataset("nnunet", root)
    (root / "dataset.json").write_text(json.dumps({**meta, "labels": {"background": 0, "organ": 1}}))
    with pytest.raises(DataError, match="outside the 2 declared classes"):  # files hold 0..2
        get_dataset("nnunet", root).slice_dataset("train")
    (root / "dataset.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        get_dataset("nnunet", root)
    (root / "dataset.json").unlink()
    with pytest.raises(DataError, match="missing dataset.json"):
        get_dataset("nnunet", root)


def test_nnunet_missing_label_and_shape_mismatch(tmp_path):
    import nibabel as nib

    root = write_nnunet(tmp_path / "D")
    lab = root / "labelsTr" / "case_001.nii.gz"
    img = nib.load(lab)
    nib.save(nib.Nifti1Image(np.zeros((7, 6, 4), np.uint8), img.affine), lab)
    with pytest.raises(DataError, match="does not match label shape"):
        get_dataset("nnunet", root).load_case("case_001", "train")
    lab.unlink()
    with pytest.raises(DataError, match="missing label file") as ei:
        get_dataset("nnunet", root)
    assert str(lab) in _one_line(ei)


def test_folder_bad_masks(tmp_path):
    from PIL import Image

    root = write_folder(tmp_path / "F")
    (root / "masks" / "img2_mask.png").unlink()
    with pytest.raises(DataError, match="no mask for") as ei:
        get_dataset("folder", root)
    assert "img2.png" in _one_line(ei)
    root = write_folder(tmp_path / "G")
    Image.fromarray(np.full((10, 12, 3), [255, 0, 0], np.uint8)).save(root / "masks" / "img0_mask.png")
    with pytest.raises(DataError, match="colour"):
        get_dataset("folder", root)
    root = write_folder(tmp_path / "H")
    with pytest.raises(DataError, match="not one of the class values"):
        m = Image.fromarray(np.full((10, 12), 7, np.uint8))
        m.save(root / "masks" / "img0_mask.png")
        get_dataset("folder", root, mask_values=[0, 255]).load_case("img0", "train")


def test_drive_missing_mask_and_bad_values(tmp_path):
    from PIL import Image

    root = write_drive(tmp_path / "D")
    (root / "training" / "mask" / "22_training_mask.gif").unlink()
    with pytest.raises(DataError, match="missing field-of-view mask") as ei:
        get_dataset("drive", root)
    assert "22_training_mask.gif" in _one_line(ei)
    root = write_drive(tmp_path / "E")
    Image.fromarray(np.full((20, 18), 100, np.uint8)).save(root / "training" / "1st_manual" / "21_manual1.gif")
    with pytest.raises(DataError, match="binary mask expected"):
        get_dataset("drive", root).load_case("21", "train")


def test_registry_errors(tmp_path):
    with pytest.raises(DataError, match="needs a folder"):
        get_dataset("synapse")
    with pytest.raises(DataError, match="not found"):
        get_dataset("synapse", tmp_path / "nope")
    with pytest.raises(DataError, match="unexpected keyword"):
        get_dataset("synapse", write_synapse(tmp_path / "S"), bogus=1)


def test_folder_lossy_masks_are_refused(tmp_path):
    from PIL import Image

    root = write_folder(tmp_path / "F")
    noisy = np.random.default_rng(0).integers(0, 256, (10, 12)).astype(np.uint8)
    Image.fromarray(noisy).save(root / "masks" / "img1_mask.png")
    with pytest.raises(DataError, match="distinct values"):
        get_dataset("folder", root)


def test_decoder_messages_over_several_lines_become_one_line(tmp_path):
    from unetzoo.data.io import unreadable_as_data_error

    with pytest.raises(DataError) as ei:
        with unreadable_as_data_error(tmp_path / "x.nii.gz", "NIfTI file"):
            raise ValueError("header is broken\n  expected 348 bytes\n")
    assert "\n" not in str(ei.value)
    assert "header is broken expected 348 bytes" in str(ei.value)
