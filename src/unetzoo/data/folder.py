"""Generic 2-D image/mask folders::

    ROOT/images/*.png|jpg|tif|bmp   ROOT/masks/*      (one split, "train")
    ROOT/train/images, ROOT/train/masks, ROOT/val/ (or valid/), ROOT/test/...   (splits)

Folder names accepted: ``images``/``image``/``imgs``; ``masks``/``mask``/``labels``/
``label``/``gt``. A mask matches an image with the same stem, or the stem plus ``_mask``,
``_seg``, ``_label``, ``_gt``; an image without a mask is an error.

Mask values -> class indices: palette (``P`` mode) masks give their palette indices;
0/255 (or 0/1) masks are binary; other grey masks whose values are exactly ``0..K-1`` are
used as they are; any other value set (e.g. {0, 128, 255}) is mapped in sorted order to
``0..K-1``. ``mask_values=[...]`` fixes the mapping explicitly (and skips the scan of all
masks at opening time). Images: grey -> 1 channel, RGB(A) -> 3 channels, scaled by the
maximum of their integer type.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unetzoo.data import imageio
from unetzoo.data.base import Case, SegDataset, check_image, check_label, check_shapes
from unetzoo.data.preprocessing import display_bit_depth, normalize
from unetzoo.errors import DataError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif")
IMAGE_DIRS = ("images", "image", "imgs")
MASK_DIRS = ("masks", "mask", "labels", "label", "gt")
MASK_SUFFIXES = ("", "_mask", "_seg", "_label", "_gt")
SPLITS = ("train", "val", "test")
LOSSY_EXTS = (".jpg", ".jpeg")
SPLIT_DIRS = {"train": ("train",), "val": ("val", "valid"), "test": ("test",)}


def _first_dir(parent: Path, names: Sequence[str]) -> Path | None:
    return next((parent / n for n in names if (parent / n).is_dir()), None)


class FolderDataset(SegDataset):
    """Reader for plain image/mask folders (see module docstring).

    Options: ``class_names`` (list, index 0 background), ``mask_values`` (raw mask values
    in class order), ``channels`` (1 or 3: convert every image to grey or RGB).
    """

    name = "folder"
    modality = "image"
    recipe = "default"
    spatial_dims = 2

    def __init__(
        self,
        root: str | Path,
        *,
        class_names: Sequence[str] | None = None,
        mask_values: Sequence[int] | None = None,
        channels: int | None = None,
    ) -> None:
        super().__init__(root)
        if not self.root.is_dir():
            raise DataError(f"image folder not found: {self.root}")
        self._files: dict[str, dict[str, tuple[Path, Path]]] = {}
        if _first_dir(self.root, IMAGE_DIRS) is not None:
            self._files["train"] = self._pair_up(self.root)
        else:
            for split in SPLITS:
                sub = _first_dir(self.root, SPLIT_DIRS[split])
                if sub is not None:
                    self._files[split] = self._pair_up(sub)
        if not self._files:
            raise DataError(
                f"{self.root}: no images/ and masks/ folders (directly or under "
                f"{'/, '.join(SPLITS)}/)"
            )
        first_img = next(iter(next(iter(self._files.values())).values()))[0]
        sample = imageio.load_image(first_img)
        if channels is None:
            channels = 1 if sample.ndim == 2 else 3
        if channels not in (1, 3):
            raise DataError(f"channels must be 1 or 3, got {channels}")
        self.in_channels = int(channels)
        depth = display_bit_depth(sample)  # 12-bit data in 16-bit files: 4095
        high = float(depth or (np.iinfo(sample.dtype).max if sample.dtype.kind in "ui" else 1))
        self.preprocessing = {"kind": "range", "low": 0.0, "high": high}
        if mask_values is not None:
            values = [int(v) for v in mask_values]
            if len(set(values)) != len(values) or len(values) < 2:
                raise DataError(f"mask_values {mask_values} must be >= 2 distinct values")
        else:
            values = self._scan_values()
        self.mask_values = values
        self._lut = None
        if values != list(range(len(values))):
            lut = np.full(max(max(values) + 1, 256), -1, dtype=np.int64)
            lut[values] = np.arange(len(values))
            self._lut = lut
        if class_names is not None:
            if len(class_names) != len(values):
                raise DataError(
                    f"{len(class_names)} class_names given but the masks hold "
                    f"{len(values)} values {values}; pass matching class_names or mask_values"
                )
            self.class_names = list(class_names)
        else:
            self.class_names = (
                ["background", "foreground"] if len(values) == 2
                else ["background", *(f"class {i}" for i in range(1, len(values)))]
            )

    def _pair_up(self, parent: Path) -> dict[str, tuple[Path, Path]]:
        idir, mdir = _first_dir(parent, IMAGE_DIRS), _first_dir(parent, MASK_DIRS)
        if idir is None or mdir is None:
            raise DataError(
                f"{parent}: needs both an images/ and a masks/ folder (found "
                f"{sorted(p.name for p in parent.iterdir() if p.is_dir())})"
            )
        masks = {p.stem: p for p in mdir.iterdir() if p.suffix.lower() in IMAGE_EXTS}
        lossy = sorted(p.name for p in masks.values() if p.suffix.lower() in LOSSY_EXTS)
        if lossy:  # JPEG blurs every class edge into new values: a 2-class mask gave 22
            raise DataError(
                f"{mdir}: {len(lossy)} JPEG mask(s) ({lossy[0]}, ...); JPEG is lossy and "
                "invents mask values at every edge: save masks losslessly (PNG, TIF, BMP)")
        pairs: dict[str, tuple[Path, Path]] = {}
        for img in sorted(idir.iterdir()):
            if img.suffix.lower() not in IMAGE_EXTS:
                continue
            mask = next((masks[img.stem + s] for s in MASK_SUFFIXES if img.stem + s in masks),
                        None)
            if mask is None:
                raise DataError(
                    f"no mask for {img} in {mdir} (looked for {img.stem}.* and "
                    f"{img.stem}_mask.*); add it or remove the image"
                )
            if img.stem in pairs:
                raise DataError(f"{idir}: two images share the stem {img.stem!r}")
            pairs[img.stem] = (img, mask)
        if not pairs:
            raise DataError(f"{idir}: no images ({', '.join(IMAGE_EXTS)})")
        return pairs

    def _raw_mask(self, path: Path) -> np.ndarray:
        arr = imageio.load_image(path)
        if arr.ndim == 3:
            if arr.shape[2] >= 3 and not (
                np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2])
            ):
                raise DataError(
                    f"{path}: colour (RGB) mask; save masks as grey or palette images with "
                    "one value per class"
                )
            arr = arr[..., 0]
        return arr

    def _scan_values(self) -> list[int]:
        seen: set[int] = set()
        for pairs in self._files.values():
            for _, mask in pairs.values():
                seen.update(int(v) for v in np.unique(self._raw_mask(mask)))
        values = sorted(seen | {0})
        if len(values) > 32:
            raise DataError(
                f"{self.root}: the masks hold {len(values)} distinct values (lossy JPEG masks?); "
                "save masks losslessly (PNG) or pass mask_values=[...]"
            )
        if set(values) <= {0, 1} or set(values) == {0, 255}:
            return [0, 255] if 255 in values else [0, 1]
        return values

    def _mask(self, path: Path) -> np.ndarray:
        raw = self._raw_mask(path).astype(np.int64)
        if self._lut is not None:
            if raw.max() >= len(self._lut) or raw.min() < 0:
                bad = raw.max()
            else:
                mapped = self._lut[raw]
                if (mapped >= 0).all():
                    return mapped
                bad = int(raw[mapped < 0][0])
            raise DataError(
                f"{path}: mask value {bad} is not one of the class values {self.mask_values}; "
                "fix the mask or pass mask_values"
            )
        return check_label(raw, self.num_classes, str(path))

    def _image(self, path: Path) -> np.ndarray:
        raw = imageio.load_image(path)
        if raw.ndim == 3:
            raw = raw[..., :3]
            if self.in_channels == 1:
                raw = raw.astype(np.float32).mean(axis=2)
        if raw.ndim == 2 and self.in_channels == 3:
            raw = np.repeat(raw[..., None], 3, axis=2)
        chw = raw[None] if raw.ndim == 2 else np.moveaxis(raw, -1, 0)
        image = normalize(chw, self.preprocessing)
        check_image(image, str(path))
        return image

    def raw_image(self, case_id: str, split: str) -> np.ndarray:
        """The image as the model sees it, ``(C, H, W)`` (a picture's raw scale is its
        bit depth: the intensity fingerprint of the inference spec is in this space)."""
        return self._image(self._pair(case_id, split)[0])

    def splits(self) -> list[str]:
        return [s for s in SPLITS if s in self._files]

    def cases(self, split: str) -> list[str]:
        self._check_split(split)
        return sorted(self._files[split])

    def _pair(self, case_id: str, split: str) -> tuple[Path, Path]:
        self._check_split(split)
        try:
            return self._files[split][case_id]
        except KeyError as exc:
            raise DataError(f"folder: no image {case_id!r} in split {split!r}") from exc

    def _read_slice(self, split: str, case_id: str, z: int, store: dict[str, Any]):
        img_p, mask_p = self._pair(case_id, split)
        image, label = self._image(img_p), self._mask(mask_p)
        check_shapes(image.shape[1:], label.shape, f"{mask_p} vs {img_p}")
        return image, label

    def _slice_index(self, split: str, cases: Sequence[str]) -> list[tuple[str, int]]:
        return [(c, 0) for c in cases]

    def load_case(self, case_id: str, split: str) -> Case:
        image, label = self._read_slice(split, case_id, 0, {})
        return Case(
            id=case_id,
            image=image[:, None],
            label=label[None],
            class_names=list(self.class_names),
        )
