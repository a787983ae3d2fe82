"""DRIVE retinal vessels (Staal et al. 2004)::

    ROOT/training/images/21_training.tif     RGB 565 x 584
    ROOT/training/1st_manual/21_manual1.gif  vessels 0/255
    ROOT/training/mask/21_training_mask.gif  field of view 0/255
    ROOT/test/images/01_test.tif, test/1st_manual/01_manual1.gif, test/mask/01_test_mask.gif

Binary (background, vessel); the field-of-view mask is ``Case.roi`` so metrics can be
restricted to it. Images are 8-bit RGB scaled by 1/255 (``{"kind": "range"}``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from unetzoo.data import imageio
from unetzoo.data.base import Case, SegDataset, check_image, check_shapes
from unetzoo.data.preprocessing import normalize
from unetzoo.errors import DataError

SPLIT_DIRS = {"train": "training", "test": "test"}
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp", ".gif")


def binary_mask(arr: np.ndarray, where: str) -> np.ndarray:
    """{0, 1} or {0, 255} mask -> uint8 {0, 1}; anything else is a DataError."""
    if arr.ndim == 3:
        arr = arr[..., 0]
    values = np.unique(arr)
    if set(values.tolist()) <= {0, 1}:
        return arr.astype(np.uint8)
    if set(values.tolist()) <= {0, 255}:
        return (arr > 0).astype(np.uint8)
    raise DataError(
        f"{where}: binary mask expected (values 0/1 or 0/255), found values "
        f"{values[:6].tolist()}; re-export the mask as black/white"
    )


class DriveDataset(SegDataset):
    """Reader for the DRIVE layout (see module docstring)."""

    name = "drive"
    modality = "fundus"
    recipe = "drive"
    spatial_dims = 2

    def __init__(self, root: str | Path) -> None:
        super().__init__(root)
        if not self.root.is_dir():
            raise DataError(f"DRIVE folder not found: {self.root}")
        self.class_names = ["background", "vessel"]
        self.in_channels = 3
        self.preprocessing = {"kind": "range", "low": 0.0, "high": 255.0}
        self._files: dict[str, dict[str, dict[str, Any]]] = {}
        for split, sub in SPLIT_DIRS.items():
            img_dir = self.root / sub / "images"
            if not img_dir.is_dir():
                continue
            entries: dict[str, dict[str, Any]] = {}
            for p in sorted(img_dir.iterdir()):
                if p.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                m = re.match(r"(\d+)_", p.name)
                if not m:
                    raise DataError(
                        f"{p}: DRIVE image names start with the case number, e.g. "
                        "21_training.tif"
                    )
                cid = m.group(1)
                manual = self._find(self.root / sub / "1st_manual", f"{cid}_manual1")
                mask = self._find(self.root / sub / "mask", f"{cid}_{sub}_mask")
                if manual is None and split == "train":
                    raise DataError(
                        f"missing vessel annotation for {p}: expected "
                        f"{self.root / sub / '1st_manual' / f'{cid}_manual1.gif'}"
                    )
                if mask is None:
                    raise DataError(
                        f"missing field-of-view mask for {p}: expected "
                        f"{self.root / sub / 'mask' / f'{cid}_{sub}_mask.gif'}"
                    )
                entries[cid] = {"image": p, "label": manual, "roi": mask}
            if entries:
                self._files[split] = entries
        if not self._files:
            raise DataError(
                f"{self.root}: no DRIVE images found (expected training/images/*.tif)"
            )

    @staticmethod
    def _find(folder: Path, stem: str) -> Path | None:
        for ext in (".gif", ".png", ".tif", ".tiff", ".bmp"):
            p = folder / f"{stem}{ext}"
            if p.is_file():
                return p
        return None

    def splits(self) -> list[str]:
        return [s for s in SPLIT_DIRS if s in self._files]

    def cases(self, split: str) -> list[str]:
        self._check_split(split)
        return sorted(self._files[split])

    def load_case(self, case_id: str, split: str) -> Case:
        self._check_split(split)
        entry = self._files[split].get(case_id)
        if entry is None:
            raise DataError(f"drive: no case {case_id!r} in split {split!r} of {self.root}")
        raw = imageio.load_image(entry["image"])
        if raw.ndim == 2:
            raw = np.repeat(raw[..., None], 3, axis=2)
        raw = raw[..., :3]
        check_image(raw.astype(np.float32), str(entry["image"]))
        image = normalize(np.moveaxis(raw, -1, 0), self.preprocessing)[:, None]
        label = None
        if entry["label"] is not None:
            lab = binary_mask(imageio.load_image(entry["label"], mode="L"), str(entry["label"]))
            check_shapes(raw.shape[:2], lab.shape, f"{entry['label']} vs {entry['image']}")
            label = lab[None].astype(np.int64)
        roi = binary_mask(imageio.load_image(entry["roi"], mode="L"), str(entry["roi"]))
        check_shapes(raw.shape[:2], roi.shape, f"{entry['roi']} vs {entry['image']}")
        return Case(
            id=case_id,
            image=np.ascontiguousarray(image, dtype=np.float32),
            label=label,
            roi=roi[None].astype(bool),
            class_names=list(self.class_names),
        )
