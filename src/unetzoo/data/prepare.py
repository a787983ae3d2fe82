"""Conversions run once before training: the raw BTCV release to the TransUNet Synapse
layout (:func:`prepare_synapse`) and the slice cache of an nnU-Net folder
(:meth:`unetzoo.data.nnunet.NnUNetDataset.prepare`)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from unetzoo.data import imageio
from unetzoo.data.preprocessing import SYNAPSE_WINDOW, ct_spec, normalize
from unetzoo.errors import DataError

# BTCV labels: 1 spleen, 2 right kidney, 3 left kidney, 4 gallbladder, 5 esophagus,
# 6 liver, 7 stomach, 8 aorta, 9 IVC, 10 portal/splenic vein, 11 pancreas,
# 12 right adrenal, 13 left adrenal. TransUNet keeps 8 organs, in this order:
BTCV_TO_SYNAPSE = {8: 1, 4: 2, 3: 3, 2: 4, 6: 5, 11: 6, 1: 7, 7: 8}
SYNAPSE_TRAIN = (5, 6, 7, 9, 10, 21, 23, 24, 26, 27, 28, 30, 31, 33, 34, 37, 39, 40)
SYNAPSE_TEST = (1, 2, 3, 4, 8, 22, 25, 29, 32, 35, 36, 38)
RAW_SUBDIRS = ("", "Training", "RawData/Training", "Abdomen/RawData/Training")


def btcv_lut() -> np.ndarray:
    """Lookup table BTCV label (0..13) -> Synapse class (0..8); other organs -> 0."""
    lut = np.zeros(14, dtype=np.uint8)
    for src, dst in BTCV_TO_SYNAPSE.items():
        lut[src] = dst
    return lut


def _find_raw(raw: Path) -> tuple[Path, Path]:
    for sub in RAW_SUBDIRS:
        base = raw / sub if sub else raw
        if (base / "img").is_dir() and (base / "label").is_dir():
            return base / "img", base / "label"
    raise DataError(
        f"{raw}: no img/ and label/ folders of the BTCV release (also looked in "
        f"{', '.join(s for s in RAW_SUBDIRS if s)}); point --raw at the folder holding them"
    )


def read_btcv_case(img_path: Path, lab_path: Path, window=SYNAPSE_WINDOW):
    """One BTCV case as ``(image float32 (D, H, W) in [0, 1], label uint8 (D, H, W))``:
    NIfTI (x, y, z) -> (z, y, x), HU clipped to ``window`` and scaled, labels mapped to the
    8 Synapse organs."""
    img, _, _ = imageio.read_file(img_path)
    lab, _, _ = imageio.read_file(lab_path)
    if img.ndim != 3:
        raise DataError(f"{img_path}: expected a 3-D CT volume, got shape {img.shape}")
    if img.shape != lab.shape:
        raise DataError(
            f"{lab_path}: label shape {lab.shape} does not match image {img_path} {img.shape}"
        )
    image = normalize(np.transpose(img, (2, 1, 0)), ct_spec(window))
    raw_lab = np.rint(np.transpose(lab, (2, 1, 0))).astype(np.int64)
    if raw_lab.min() < 0 or raw_lab.max() > 13:
        raise DataError(
            f"{lab_path}: label values {int(raw_lab.min())}..{int(raw_lab.max())} are not "
            "BTCV labels 0..13; is this the right file?"
        )
    if not np.isfinite(image).all():
        raise DataError(f"{img_path}: image contains NaN or Inf values; fix or remove this file")
    return np.ascontiguousarray(image, dtype=np.float32), btcv_lut()[raw_lab]


def prepare_synapse(
    raw: str | Path,
    out: str | Path,
    *,
    train_ids: Sequence[int] = SYNAPSE_TRAIN,
    test_ids: Sequence[int] = SYNAPSE_TEST,
    window: Sequence[float] = SYNAPSE_WINDOW,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Convert the raw BTCV release (``img/imgXXXX.nii.gz``, ``label/labelXXXX.nii.gz``)
    into the TransUNet Synapse layout under ``out``:

    ``train_npz/caseXXXX_sliceNNN.npz`` (``image``, ``label`` float32 (H, W)),
    ``test_vol_h5/caseXXXX.npy.h5`` (``image``, ``label`` float32 (D, H, W)) and
    ``lists/lists_Synapse/train.txt`` / ``test_vol.txt``. Default split: the standard
    18 training / 12 test cases. Returns ``out``.
    """
    import h5py

    raw, out = Path(raw), Path(out)
    img_dir, lab_dir = _find_raw(raw)
    ids = list(train_ids) + list(test_ids)
    if not ids:
        raise DataError("no cases to convert: give at least one training or test case")
    overlap = set(train_ids) & set(test_ids)
    if overlap:
        raise DataError(f"cases {sorted(overlap)} are in both the training and the test split")
    missing = [
        str(p) for i in ids
        for p in (img_dir / f"img{i:04d}.nii.gz", lab_dir / f"label{i:04d}.nii.gz")
        if not p.is_file()
    ]
    if missing:
        raise DataError(
            f"{len(missing)} BTCV file(s) missing, e.g. {missing[0]}; complete the release or "
            "choose cases with --train/--test"
        )
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise DataError(f"{out} is not empty; choose an empty folder or pass --overwrite")
        from unetzoo.runs.outputs import clear_recorded

        # Only the files an earlier build listed; a file of the user's there is refused.
        clear_recorded(out, ("train_npz", "test_vol_h5", "lists"))
    (out / "train_npz").mkdir(parents=True, exist_ok=True)
    (out / "test_vol_h5").mkdir(exist_ok=True)
    lists = out / "lists" / "lists_Synapse"
    lists.mkdir(parents=True, exist_ok=True)
    say = log or (lambda msg: None)
    slice_names: list[str] = []
    for i in train_ids:
        image, label = read_btcv_case(img_dir / f"img{i:04d}.nii.gz",
                                      lab_dir / f"label{i:04d}.nii.gz", window)
        for z in range(image.shape[0]):
            name = f"case{i:04d}_slice{z:03d}"
            np.savez(out / "train_npz" / f"{name}.npz", image=image[z],
                     label=label[z].astype(np.float32))
            slice_names.append(name)
        say(f"train case{i:04d}: {image.shape[0]} slices")
    for i in test_ids:
        image, label = read_btcv_case(img_dir / f"img{i:04d}.nii.gz",
                                      lab_dir / f"label{i:04d}.nii.gz", window)
        with h5py.File(out / "test_vol_h5" / f"case{i:04d}.npy.h5", "w") as f:
            f.create_dataset("image", data=image)
            f.create_dataset("label", data=label.astype(np.float32))
        say(f"test case{i:04d}: volume {image.shape}")
    (lists / "train.txt").write_text("".join(f"{n}\n" for n in slice_names))
    (lists / "test_vol.txt").write_text("".join(f"case{i:04d}\n" for i in test_ids))
    from unetzoo.runs.outputs import OutputFolder

    OutputFolder(out).record(
        [f"train_npz/{n}.npz" for n in slice_names]
        + [f"test_vol_h5/case{i:04d}.npy.h5" for i in test_ids]
        + ["lists/lists_Synapse/train.txt", "lists/lists_Synapse/test_vol.txt"])
    return out


def stderr_log(msg: str) -> None:
    print(msg, file=sys.stderr)
