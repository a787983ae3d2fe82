"""Tiny datasets in the real on-disk layouts, written by the tests themselves."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import tifffile
from PIL import Image

from unetzoo.data.imageio import save_image


def write_synapse(root: Path, *, test_dir="test_vol_h5", n_classes=9, size=16, lists=True,
                  train_cases=(5, 6), test_cases=(1,), depth=3, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    (root / "train_npz").mkdir(parents=True)
    (root / test_dir).mkdir()
    train_names = []
    for c in train_cases:
        for s in range(depth):
            img = rng.random((size, size)).astype(np.float32)
            lab = rng.integers(0, n_classes, (size, size)).astype(np.float32)
            name = f"case{c:04d}_slice{s:03d}"
            np.savez(root / "train_npz" / f"{name}.npz", image=img, label=lab)
            train_names.append(name)
    test_names = []
    for c in test_cases:
        name = f"case{c:04d}"
        with h5py.File(root / test_dir / f"{name}.npy.h5", "w") as f:
            f["image"] = rng.random((depth + 1, size, size)).astype(np.float32)
            f["label"] = rng.integers(0, n_classes, (depth + 1, size, size)).astype(np.float32)
        test_names.append(name)
    if lists:
        ld = root / "lists" / "lists_Synapse"
        ld.mkdir(parents=True)
        (ld / "train.txt").write_text("\n".join(train_names) + "\n")
        (ld / "test_vol.txt").write_text("\n".join(test_names) + "\n")
    return root


def write_acdc(root: Path, size=12, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    lists = root / "lists_ACDC"
    lists.mkdir(parents=True)
    for split in ("train", "valid"):
        (root / split).mkdir()
        names = []
        for case in (1, 2):
            for s in range(2):
                name = f"case_{case:03d}_sliceED_{s}.npz"
                np.savez(root / split / name, img=rng.random((size, size)).astype(np.float32),
                         label=rng.integers(0, 4, (size, size)).astype(np.uint8))
                names.append(name)
        (lists / f"{split}.txt").write_text("\n".join(names))
    (root / "test").mkdir()
    np.savez(root / "test" / "case_003_volume_ED.npz",
             img=rng.random((5, size, size)).astype(np.float32),
             label=rng.integers(0, 4, (5, size, size)).astype(np.uint8))
    (lists / "test.txt").write_text("case_003_volume_ED\n")
    return root


def write_drive(root: Path, size=(20, 18), n_train=2, n_test=1, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    h, w = size
    for folder, tag, ids in (("training", "training", range(21, 21 + n_train)),
                             ("test", "test", range(1, 1 + n_test))):
        for sub in ("images", "1st_manual", "mask"):
            (root / folder / sub).mkdir(parents=True, exist_ok=True)
        for i in ids:
            tifffile.imwrite(str(root / folder / "images" / f"{i:02d}_{tag}.tif"),
                             rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            ves = (rng.random((h, w)) < 0.15).astype(np.uint8) * 255
            Image.fromarray(ves).save(root / folder / "1st_manual" / f"{i:02d}_manual1.gif")
            fov = np.zeros((h, w), np.uint8)
            fov[2:-2, 2:-2] = 255
            Image.fromarray(fov).save(root / folder / "mask" / f"{i:02d}_{tag}_mask.gif")
    return root


def write_nnunet(root: Path, *, channels=("CT",), n_train=2, n_test=1, shape=(7, 6, 5),
                 zooms=(0.8, 0.9, 3.0), labels=("background", "organ", "tumour"),
                 seed=0) -> Path:
    """v2 raw folder; ``shape`` and ``zooms`` in file (i, j, k) order."""
    rng = np.random.default_rng(seed)
    for d in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (root / d).mkdir(parents=True)
    affine = np.diag([*zooms, 1.0])
    affine[:3, 3] = [-10.0, 20.0, 5.0]
    for i in range(n_train + n_test):
        tr = i < n_train
        cid = f"case_{i:03d}"
        for c, _ in enumerate(channels):
            arr = rng.normal(50, 100, shape).astype(np.float32)
            save_image(arr, affine, root / ("imagesTr" if tr else "imagesTs") / f"{cid}_{c:04d}.nii.gz")
        lab = rng.integers(0, len(labels), shape).astype(np.uint8)
        save_image(lab, affine, root / ("labelsTr" if tr else "labelsTs") / f"{cid}.nii.gz")
    meta = {
        "channel_names": {str(i): c for i, c in enumerate(channels)},
        "labels": {name: i for i, name in enumerate(labels)},
        "numTraining": n_train,
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def write_msd(root: Path, *, n_channels=2, shape=(6, 5, 4), seed=0) -> Path:
    rng = np.random.default_rng(seed)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    for i in range(2):
        name = f"prostate_{i:02d}.nii.gz"
        save_image(rng.normal(300, 50, (*shape, n_channels)).astype(np.float32), np.eye(4),
                   root / "imagesTr" / name)
        save_image(rng.integers(0, 3, shape).astype(np.uint8), np.eye(4), root / "labelsTr" / name)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    meta = {"modality": {"0": "T2", "1": "ADC"}, "labels": {"0": "background", "1": "PZ", "2": "TZ"},
            "numTraining": 2, "training": training, "test": []}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def write_folder(root: Path, *, kind="binary", n=3, size=(10, 12), splits=None, seed=0) -> Path:
    """``kind``: ``binary`` (0/255 png), ``palette`` (P-mode png, 3 classes), ``grey3``
    ({0, 128, 255})."""
    rng = np.random.default_rng(seed)
    parents = [root] if splits is None else [root / s for s in splits]
    for parent in parents:
        (parent / "images").mkdir(parents=True)
        (parent / "masks").mkdir()
        for i in range(n):
            img = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            Image.fromarray(img).save(parent / "images" / f"img{i}.png")
            if kind == "binary":
                m = Image.fromarray(((rng.random(size) < 0.3) * 255).astype(np.uint8))
            elif kind == "palette":
                m = Image.fromarray(rng.integers(0, 3, size, dtype=np.uint8), mode="P")
                m.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
            else:
                m = Image.fromarray(np.array([0, 128, 255], np.uint8)[rng.integers(0, 3, size)])
            m.save(parent / "masks" / f"img{i}_mask.png")
    return root
