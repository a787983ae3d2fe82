from __future__ import annotations

import json

import numpy as np
import pytest

from unetzoo.data import get_dataset, list_datasets
from unetzoo.data.phantom import SYNAPSE_CLASSES, generate_phantom, make_ct_case
from unetzoo.errors import DataError


def test_registry_lists_every_format():
    assert set(list_datasets()) >= {"phantom", "nnunet", "synapse", "avt", "acdc", "drive", "folder"}
    with pytest.raises(DataError, match="known datasets"):
        get_dataset("no-such-format", "/tmp")


def test_ct_case_is_deterministic_and_has_every_organ():
    hu1, lab1 = make_ct_case(np.random.default_rng(5), (16, 64, 64))
    hu2, lab2 = make_ct_case(np.random.default_rng(5), (16, 64, 64))
    hu3, _ = make_ct_case(np.random.default_rng(6), (16, 64, 64))
    assert np.array_equal(hu1, hu2) and np.array_equal(lab1, lab2)
    assert not np.array_equal(hu1, hu3)
    assert hu1.dtype == np.int16 and lab1.dtype == np.uint8
    counts = np.bincount(lab1.ravel(), minlength=9)
    assert (counts[1:] > 0).all(), counts
    # Sizes differ by more than an order of magnitude: liver vs gallbladder.
    assert counts[5] > 10 * counts[2]
    # Distinct mean HU per organ (what makes them learnable from intensity).
    means = [hu1[lab1 == k].mean() for k in (1, 2, 3, 5, 6, 7, 8)]
    assert min(abs(a - b) for i, a in enumerate(means) for b in means[i + 1 :]) > 15
    # Air outside the body and noise inside organs.
    assert hu1[0, 0, 0] < -900
    assert 5 < hu1[lab1 == 5].std() < 40


def test_phantom_layout_and_reader(tiny_phantom_root):
    root = tiny_phantom_root
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "CT"} and meta["numTraining"] == 3
    assert (root / "imagesTr" / "phantom_000_0000.nii.gz").is_file()
    assert (root / "labelsTs" / "phantom_003.nii.gz").is_file()
    ds = get_dataset("phantom", root, n_train=3, n_test=1, shape=(6, 32, 32), seed=3)
    assert ds.class_names == SYNAPSE_CLASSES and ds.num_classes == 9
    assert ds.preprocessing == {"kind": "ct", "window": [-125.0, 275.0]}
    assert ds.recipe == "phantom" and ds.modality == "CT" and ds.spatial_dims == 3
    assert ds.splits() == ["train", "test"] and len(ds.cases("train")) == 3
    case = ds.load_case("phantom_003", "test")
    assert case.image.shape == (1, 6, 32, 32) and case.image.dtype == np.float32
    assert case.label.shape == (6, 32, 32) and case.label.dtype == np.int64
    assert 0.0 <= case.image.min() and case.image.max() <= 1.0
    assert case.spacing == (5.0, 2.5, 2.5)
    items = ds.slice_dataset("train")
    assert len(items) == 18
    item = items[4]
    assert tuple(item["image"].shape) == (1, 32, 32) and item["label"].dtype.is_floating_point is False


def test_phantom_reused_and_mismatch_is_an_error(tiny_phantom_root):
    stamp = (tiny_phantom_root / "phantom.json").stat().st_mtime_ns
    generate_phantom(tiny_phantom_root, n_train=3, n_test=1, shape=(6, 32, 32), seed=3)
    assert (tiny_phantom_root / "phantom.json").stat().st_mtime_ns == stamp
    with pytest.raises(DataError, match="other settings"):
        generate_phantom(tiny_phantom_root, n_train=3, n_test=1, shape=(6, 32, 32), seed=4)


def test_default_phantom_goes_to_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("UNETZOO_CACHE", str(tmp_path))
    ds = get_dataset(None, n_train=1, n_test=0, shape=(4, 24, 24))
    assert ds.name == "phantom" and str(ds.root).startswith(str(tmp_path))
    assert ds.splits() == ["train"]
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]  # temp dir renamed


def test_fundus_phantom_through_drive_reader(tmp_path):
    ds = get_dataset("phantom", tmp_path / "f", kind="fundus", n_train=2, n_test=1, shape=(48, 48))
    assert (tmp_path / "f" / "training" / "images" / "21_training.tif").is_file()
    assert (tmp_path / "f" / "test" / "1st_manual" / "01_manual1.gif").is_file()
    assert ds.in_channels == 3 and ds.class_names == ["background", "vessel"]
    assert ds.recipe == "drive"
    case = ds.load_case("21", "train")
    assert case.image.shape == (3, 1, 48, 48) and case.roi.shape == (1, 48, 48)
    frac = case.label.mean()
    assert 0.02 < frac < 0.3  # thin vessels
    assert not case.label[~case.roi].any()  # vessels inside the field of view
