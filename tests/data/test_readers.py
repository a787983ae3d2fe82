from __future__ import annotations

import h5py
import nibabel as nib
import numpy as np
import pytest
from _data_writers import (
    write_acdc,
    write_drive,
    write_folder,
    write_msd,
    write_nnunet,
    write_synapse,
)
from PIL import Image

from unetzoo.data import get_dataset
from unetzoo.data.geometry import reorient
from unetzoo.data.preprocessing import normalize


def test_synapse_layout(tmp_path):
    root = write_synapse(tmp_path / "Synapse")
    ds = get_dataset("synapse", root)
    assert ds.num_classes == 9 and ds.class_names[1] == "aorta" and ds.class_names[8] == "stomach"
    assert ds.splits() == ["train", "test"] and ds.preprocessing == {"kind": "none"}
    assert ds.cases("train") == ["case0005", "case0006"] and ds.cases("test") == ["case0001"]
    train = ds.slice_dataset("train")
    assert len(train) == 6
    item = train[4]
    raw = np.load(root / "train_npz" / "case0006_slice001.npz")
    assert np.array_equal(item["image"][0].numpy(), raw["image"])
    assert np.array_equal(item["label"].numpy(), raw["label"].astype(np.int64))
    case = ds.load_case("case0001", "test")
    with h5py.File(root / "test_vol_h5" / "case0001.npy.h5") as f:
        assert np.array_equal(case.image[0], f["image"][()])
    assert case.image.shape == (1, 4, 16, 16) and case.label.dtype == np.int64
    assert case.spacing == (1.0, 1.0, 1.0)
    test = ds.slice_dataset("test")  # h5 slices read one at a time
    assert len(test) == 4 and np.array_equal(test[2]["image"][0].numpy(), case.image[0, 2])
    stacked = ds.load_case("case0005", "train")
    assert stacked.image.shape == (1, 3, 16, 16)


def test_synapse_without_lists_globs_folders(tmp_path):
    root = write_synapse(tmp_path / "S", lists=False)
    assert len(get_dataset("synapse", root).slice_dataset("train")) == 6


def test_avt_layout(tmp_path):
    root = write_synapse(tmp_path / "AVT", test_dir="test_vol", n_classes=2)
    ds = get_dataset("avt", root)
    assert ds.class_names == ["background", "aorta"] and ds.splits() == ["train", "test"]
    assert ds.load_case("case0001", "test").label.max() <= 1


def test_acdc_layout(tmp_path):
    ds = get_dataset("acdc", write_acdc(tmp_path / "ACDC"))
    assert ds.splits() == ["train", "val", "test"] and ds.modality == "MRI"
    assert ds.class_names == ["background", "right ventricle", "myocardium", "left ventricle"]
    assert ds.cases("train") == ["case_001", "case_002"]
    assert len(ds.slice_dataset("val")) == 4
    vol = ds.load_case("case_003_volume_ED", "test")
    assert vol.image.shape == (1, 5, 12, 12)
    assert len(ds.slice_dataset("test")) == 5


def test_drive_layout(tmp_path):
    root = write_drive(tmp_path / "DRIVE")
    ds = get_dataset("drive", root)
    assert ds.splits() == ["train", "test"] and ds.cases("train") == ["21", "22"]
    case = ds.load_case("21", "train")
    raw = np.asarray(Image.open(root / "training" / "1st_manual" / "21_manual1.gif").convert("L"))
    assert np.array_equal(case.label[0], (raw > 0).astype(np.int64))
    assert case.image.shape == (3, 1, 20, 18) and 0 <= case.image.min() and case.image.max() <= 1
    assert case.roi.dtype == bool and case.roi[0, 0, 0] == False and case.roi[0, 5, 5] == True  # noqa: E712
    items = ds.slice_dataset("train")
    assert len(items) == 2 and tuple(items[0]["image"].shape) == (3, 20, 18)


@pytest.mark.parametrize("kind,n_classes", [("binary", 2), ("palette", 3), ("grey3", 3)])
def test_folder_layout(tmp_path, kind, n_classes):
    root = write_folder(tmp_path / "F", kind=kind)
    ds = get_dataset("folder", root)
    assert ds.num_classes == n_classes and ds.in_channels == 3 and ds.splits() == ["train"]
    item = ds.slice_dataset("train")[1]
    raw = np.asarray(Image.open(root / "masks" / "img1_mask.png"))
    expected = {"binary": raw // 255, "palette": raw, "grey3": raw // 127}[kind]
    assert np.array_equal(item["label"].numpy(), expected.astype(np.int64))
    assert tuple(item["image"].shape) == (3, 10, 12)


def test_folder_splits_and_grey_conversion(tmp_path):
    root = write_folder(tmp_path / "F", splits=("train", "valid", "test"))
    ds = get_dataset("folder", root, channels=1, class_names=["bg", "polyp"])
    assert ds.splits() == ["train", "val", "test"] and ds.in_channels == 1
    assert ds.class_names == ["bg", "polyp"]
    assert ds.load_case("img0", "test").image.shape == (1, 1, 10, 12)


def test_nnunet_v2_multichannel_spacing_and_affine(tmp_path):
    root = write_nnunet(tmp_path / "Dataset001", channels=("T2", "ADC"))
    ds = get_dataset("nnunet", root)
    assert ds.in_channels == 2 and ds.modality == "MRI" and ds.num_classes == 3
    assert ds.preprocessing["kind"] == "channels"
    case = ds.load_case("case_000", "train")
    # File (i, j, k) = (7, 6, 5) with k the through-plane axis (3.0 mm) -> (k, j, i).
    assert case.image.shape == (2, 5, 6, 7) and case.label.shape == (5, 6, 7)
    assert np.allclose(case.spacing, (3.0, 0.9, 0.8))
    for c in range(2):  # per-volume z-score
        assert abs(case.image[c].mean()) < 1e-4 and abs(case.image[c].std() - 1) < 1e-3
    raw = nib.load(root / "labelsTr" / "case_000.nii.gz")
    assert np.array_equal(case.label, np.asarray(raw.dataobj).transpose(2, 1, 0))
    # The affine maps (d, h, w) of the Case arrays to the same world points as the file.
    d, h, w = 3, 4, 5
    world_case = case.affine @ [d, h, w, 1]
    world_file = raw.affine @ [w, h, d, 1]
    assert np.allclose(world_case, world_file)
    # Round trip: a prediction saved with Case.affine/axes lands on the file's voxels
    # in the file's own axis order, and reads back as the same Case arrays.
    from unetzoo.data.imageio import save_case_labels

    assert case.axes == (2, 1, 0)
    save_case_labels(case.label.astype(np.uint8), case.affine, tmp_path / "p.nii.gz", case.axes)
    back = nib.load(tmp_path / "p.nii.gz")
    assert back.shape == raw.shape and np.allclose(back.affine, raw.affine)
    assert np.array_equal(np.asarray(back.dataobj), np.asarray(raw.dataobj))
    reor, aff, spacing, _ = reorient(np.asarray(back.dataobj), back.affine,
                                     back.header.get_zooms(), None)
    assert np.allclose(spacing, case.spacing) and np.allclose(aff, case.affine)
    assert np.array_equal(reor, case.label)
    # Without axes, the (D, H, W) array is written as is with Case.affine: same world points.
    save_case_labels(case.label.astype(np.uint8), case.affine, tmp_path / "q.nii.gz")
    q = nib.load(tmp_path / "q.nii.gz")
    assert np.allclose(q.affine @ [d, h, w, 1], world_file)


def test_nnunet_ct_window_and_slice_axis(tmp_path):
    root = write_nnunet(tmp_path / "D", zooms=(1.0, 1.0, 1.0))
    raw = np.asarray(nib.load(root / "imagesTr" / "case_001_0000.nii.gz").dataobj)
    ds = get_dataset("nnunet", root, ct_window=(-50, 150))
    case = ds.load_case("case_001", "train")
    expected = normalize(raw.transpose(2, 1, 0), {"kind": "ct", "window": [-50, 150]})
    assert np.allclose(case.image[0], expected)
    side = get_dataset("nnunet", root, slice_axis=0).load_case("case_001", "train")
    assert side.image.shape == (1, 7, 5, 6)  # i first, then (k, j)
    assert len(ds.slice_dataset("train")) == 10  # 2 cases x 5 slices along k


def test_nnunet_cache_is_reused_and_invalidated(tmp_path):
    root = write_nnunet(tmp_path / "D")
    ds = get_dataset("nnunet", root)
    items = ds.slice_dataset("train")
    npys = sorted(ds.cache_dir.rglob("*.npy"))
    assert len(npys) == 4  # image + label per training case
    stamp = npys[0].stat().st_mtime_ns
    get_dataset("nnunet", root).slice_dataset("train")
    assert npys[0].stat().st_mtime_ns == stamp  # reused
    lab = nib.load(root / "labelsTr" / "case_000.nii.gz")
    new = np.zeros(lab.shape, np.uint8)
    nib.save(nib.Nifti1Image(new, lab.affine), root / "labelsTr" / "case_000.nii.gz")
    assert get_dataset("nnunet", root).load_case("case_000", "train").label.max() == 0
    assert len(items) == 10


def test_msd_variant_with_4d_images(tmp_path):
    ds = get_dataset("nnunet", write_msd(tmp_path / "Task05"), mri_norm="percentile")
    assert ds.in_channels == 2 and ds.class_names == ["background", "PZ", "TZ"]
    case = ds.load_case("prostate_01", "train")
    assert case.image.shape == (2, 4, 5, 6)
    assert 0 <= case.image.min() and case.image.max() <= 1
