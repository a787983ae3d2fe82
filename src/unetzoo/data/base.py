"""The dataset contract shared by every reader: :class:`Case`, :class:`SegDataset` and the
2-D slice view that training iterates over.

A reader subclasses :class:`SegDataset` and implements ``splits``, ``cases``,
``load_case`` and, where it can read one slice cheaply, ``_slice_index`` /
``_read_slice``. The default slice view loads whole cases through ``load_case`` once per
worker and keeps them (fine for small datasets; volume readers override it with a
memory-mapped cache so no volume is re-read per sample).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from unetzoo.errors import DataError

Transform = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]


@dataclass
class Case:
    """One evaluation case.

    ``image`` float32 ``(C, D, H, W)`` (already normalised), ``label`` int64 ``(D, H, W)``
    or None, ``spacing`` ``(sz, sy, sx)`` mm (1.0 where unknown), ``affine`` 4x4 float64
    mapping ``(d, h, w, 1)`` voxel indices of these arrays to world mm (None for formats
    without one), ``roi`` bool ``(D, H, W)`` or None (DRIVE field of view). 2-D datasets
    have ``D == 1``. ``axes``: for NIfTI sources, the file axis (0, 1, 2 = i, j, k) that
    each of ``(D, H, W)`` came from, so :func:`unetzoo.data.imageio.save_case_labels` can write
    a prediction back in the file's own voxel order. ``ignore_label``: the label value
    of unannotated voxels (nnU-Net's ``"ignore"``), left out of the metrics; None if none.
    """

    id: str
    image: np.ndarray
    label: np.ndarray | None
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    affine: np.ndarray | None = None
    roi: np.ndarray | None = None
    class_names: list[str] = field(default_factory=list)
    axes: tuple[int, int, int] | None = None
    ignore_label: int | None = None


def check_image(image: np.ndarray, where: str) -> None:
    """Raise :class:`DataError` if ``image`` is empty or holds NaN or Inf."""
    if image.size == 0:
        raise DataError(f"{where}: image holds no voxels (shape {image.shape}); fix or remove this file")
    if not np.isfinite(image).all():
        raise DataError(
            f"{where}: image contains NaN or Inf values; fix or remove this file "
            "(unetzoo does not silently replace non-finite intensities)"
        )


def check_label(label: np.ndarray, num_classes: int, where: str) -> np.ndarray:
    """Return ``label`` as int64 after checking it holds integers in ``[0, num_classes)``."""
    if label.dtype.kind == "f":
        if not np.isfinite(label).all() or not np.array_equal(label, np.round(label)):
            raise DataError(
                f"{where}: label holds non-integer values; labels must be class indices"
            )
    lab = label.astype(np.int64, copy=False)
    if lab.size:
        lo, hi = int(lab.min()), int(lab.max())
        if lo < 0 or hi >= num_classes:
            bad = sorted(int(v) for v in np.unique(lab) if v < 0 or v >= num_classes)[:5]
            raise DataError(
                f"{where}: label values {bad} are outside the {num_classes} declared classes "
                f"0..{num_classes - 1}; fix the label file or the class list of the dataset"
            )
    return lab


def check_shapes(image_shape: Sequence[int], label_shape: Sequence[int], where: str) -> None:
    """Raise :class:`DataError` when the spatial shapes of image and label differ."""
    if tuple(image_shape) != tuple(label_shape):
        raise DataError(
            f"{where}: image shape {tuple(image_shape)} does not match label shape "
            f"{tuple(label_shape)}; image and label must cover the same voxels"
        )


class SegDataset:
    """A segmentation dataset on disk (see docs/internals.md, "Data").

    Attributes: ``name``, ``root``, ``class_names`` (index 0 background), ``num_classes``,
    ``in_channels``, ``modality`` (``"CT"``, ``"MRI"``, ``"fundus"``, ``"image"``),
    ``recipe`` (augmentation recipe key), ``preprocessing`` (JSON-able spec for
    :func:`unetzoo.data.preprocessing.normalize`), ``spatial_dims`` (3 or 2),
    ``ignore_label`` (label value of unannotated pixels, not a class: kept in the label
    arrays, left out of loss and metrics; None if none), ``title`` (a display name such
    as dataset.json's ``name``; None: use ``name``).
    """

    name: str = "base"
    modality: str = "image"
    recipe: str = "default"
    spatial_dims: int = 2
    ignore_label: int | None = None
    title: str | None = None

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.class_names: list[str] = ["background", "foreground"]
        self.in_channels: int = 1
        self.preprocessing: dict[str, Any] = {"kind": "none"}

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, root='{self.root}', "
            f"classes={self.num_classes}, in_channels={self.in_channels}, "
            f"splits={self.splits()})"
        )

    # -- to implement ------------------------------------------------------------------
    def splits(self) -> list[str]:
        """Split names present on disk, e.g. ``["train", "test"]``."""
        raise NotImplementedError

    def cases(self, split: str) -> list[str]:
        """Case ids of ``split`` (sorted, non-empty)."""
        raise NotImplementedError

    def load_case(self, case_id: str, split: str) -> Case:
        """The whole case ``case_id`` of ``split`` as a :class:`Case`."""
        raise NotImplementedError

    # -- slice access (override for speed) ---------------------------------------------
    def _slice_index(self, split: str, cases: Sequence[str]) -> list[tuple[str, int]]:
        """``(case_id, slice)`` pairs of the 2-D training samples of ``cases``."""
        index: list[tuple[str, int]] = []
        for cid in cases:
            depth = self.load_case(cid, split).image.shape[1]
            index.extend((cid, z) for z in range(depth))
        return index

    def _read_slice(
        self, split: str, case_id: str, z: int, store: dict[str, Any]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Image ``(C, H, W)`` float32 and label ``(H, W)`` int64 of one slice.

        ``store`` is a per-worker dict the reader may use as a cache.
        """
        case = store.get(case_id)
        if case is None:
            case = store[case_id] = self.load_case(case_id, split)
        if case.label is None:
            raise DataError(
                f"{self.name}: case {case_id!r} of split {split!r} has no label; "
                "training needs labelled cases"
            )
        return case.image[:, z], case.label[z]

    # -- helpers ---------------------------------------------------------------------
    def _check_split(self, split: str) -> None:
        names = self.splits()
        if split not in names:
            raise DataError(
                f"{self.name} dataset at {self.root} has no split {split!r}; "
                f"available splits: {names or 'none'}"
            )

    def _check_cases(self, split: str, cases: Sequence[str] | None) -> list[str]:
        known = self.cases(split)
        if cases is None:
            return known
        known_set = set(known)
        missing = [c for c in cases if c not in known_set]
        if missing:
            raise DataError(
                f"{self.name}: cases {missing[:5]} are not in split {split!r} "
                f"(it has {len(known)} cases, e.g. {known[:3]})"
            )
        if not cases:
            raise DataError(f"{self.name}: empty case list for split {split!r}")
        return list(cases)

    def slice_dataset(
        self,
        split: str,
        cases: Sequence[str] | None = None,
        transform: Transform | None = None,
        *,
        seed: int = 0,
    ) -> SliceDataset:
        """A torch ``Dataset`` of the 2-D slices of ``cases`` (default: all of ``split``).

        Items are ``{"image": FloatTensor (C, H, W), "label": LongTensor (H, W),
        "case": str, "slice": int}``. ``transform(image, label, rng)`` is applied with the
        dataset's generator (``seed``; replaced per worker and epoch by
        :func:`unetzoo.data.transforms.seed_worker`).
        """
        self._check_split(split)
        chosen = self._check_cases(split, cases)
        index = self._slice_index(split, chosen)
        if not index:
            raise DataError(f"{self.name}: split {split!r} of {self.root} has no slices")
        plan = getattr(self, "plan", None)  # a planned run (data.plan.SlicePlan): resampled
        if plan is not None:  # slices, patch crops
            return plan.slice_dataset(self, split, index, transform, seed=seed)
        return SliceDataset(self, split, index, transform, seed=seed)


class SliceDataset(Dataset):
    """2-D samples of one split. Holds a numpy ``rng`` owned by this dataset / worker."""

    def __init__(
        self,
        source: SegDataset,
        split: str,
        index: list[tuple[str, int]],
        transform: Transform | None = None,
        *,
        seed: int = 0,
    ) -> None:
        self.source = source
        self.split = split
        self.index = index
        self.transform = transform
        self.rng = np.random.default_rng(seed)
        self._store: dict[str, Any] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_store"] = {}  # open HDF5 handles / memory maps are per process
        return state

    @property
    def case_ids(self) -> list[str]:
        return sorted({c for c, _ in self.index})

    def _prepare(self, case_id: str, image: np.ndarray, label: np.ndarray):
        """The slice before augmentation (a planned dataset resamples and crops here)."""
        return image, label

    def __getitem__(self, i: int) -> dict[str, Any]:
        case_id, z = self.index[i]
        if self._pid != os.getpid():  # new worker: never share open files or maps
            self._store, self._pid = {}, os.getpid()
        image, label = self.source._read_slice(self.split, case_id, z, self._store)
        image, label = self._prepare(case_id, np.asarray(image, dtype=np.float32),
                                     np.asarray(label, dtype=np.int64))
        if self.transform is not None:
            image, label = self.transform(image, label, self.rng)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)),
            "label": torch.from_numpy(np.ascontiguousarray(label, dtype=np.int64)),
            "case": case_id,
            "slice": z,
        }
