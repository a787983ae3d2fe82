"""Readers for the "list file + per-slice npz + per-volume file" layouts used by TransUNet
(Synapse, AVT) and the SelfReg-UNet / EMCAD family (ACDC).

A split is either a *slice split* (one 2-D ``image``/``label`` pair per file, grouped into
cases by the name before ``_slice``) or a *volume split* (one ``D x H x W`` pair per file,
``.npz`` or ``.h5``). Which one is decided from the first file of the split. The split's
list file (one file name per line, extension optional) fixes its content; without a list
file every matching file of the folder is used (sorted).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unetzoo.data import io
from unetzoo.data.base import Case, SegDataset, check_image, check_label, check_shapes
from unetzoo.errors import DataError

SLICE_RE = re.compile(r"^(?P<case>.+?)_slice_?(?P<num>[A-Za-z]*_?\d+)$")
SUFFIXES = (".npz", ".npy.h5", ".h5", ".hdf5")


def _stem(name: str) -> str:
    for suf in SUFFIXES:
        if name.endswith(suf):
            return name[: -len(suf)]
    return name


def _natural_key(text: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


class ListedDataset(SegDataset):
    """Base class; subclasses set the class attributes below."""

    class_list: list[str] = []
    image_key = "image"
    label_key = "label"
    split_dirs: dict[str, Sequence[str]] = {}
    list_files: dict[str, Sequence[str]] = {}
    list_dir_names: Sequence[str] = ("lists",)

    def __init__(self, root: str | Path, *, list_dir: str | Path | None = None) -> None:
        super().__init__(root)
        if not self.root.is_dir():
            raise DataError(f"{self.name} dataset folder not found: {self.root}")
        self.class_names = list(self.class_list)
        self.in_channels = 1
        self.preprocessing = {"kind": "none"}
        self.list_dir = None if list_dir is None else Path(list_dir)
        if self.list_dir is not None and not self.list_dir.is_dir():
            raise DataError(f"list_dir {self.list_dir} does not exist")
        self._splits: dict[str, dict[str, Any]] = {}
        for split in self.split_dirs:
            info = self._scan(split)
            if info is not None:
                self._splits[split] = info
        if not self._splits:
            wanted = ", ".join(f"{d[0]}/" for d in self.split_dirs.values())
            raise DataError(f"{self.root}: empty {self.name} dataset (expected {wanted})")

    # -- discovery -------------------------------------------------------------------
    def _find_list(self, split: str) -> Path | None:
        dirs = [self.list_dir] if self.list_dir else [
            self.root, *(self.root / d for d in self.list_dir_names)
        ]
        for d in dirs:
            for name in self.list_files.get(split, ()):
                p = d / name
                if p.is_file():
                    return p
        return None

    def _scan(self, split: str) -> dict[str, Any] | None:
        folder = next(
            (self.root / d for d in self.split_dirs[split] if (self.root / d).is_dir()), None
        )
        list_path = self._find_list(split)
        if folder is None:
            if list_path is not None:
                raise DataError(
                    f"{list_path} lists the {split!r} split but its folder is missing: "
                    f"expected {self.root / self.split_dirs[split][0]}"
                )
            return None
        if list_path is not None:
            names = io.read_list(list_path)
            if not names:
                raise DataError(f"{list_path}: empty list file for split {split!r}")
            files = [self._resolve(folder, n, list_path) for n in names]
        else:
            files = sorted(
                (p for p in folder.iterdir() if p.name.endswith(SUFFIXES)),
                key=lambda p: _natural_key(p.name),
            )
            if not files:
                raise DataError(f"{folder}: no .npz/.h5 files for split {split!r}")
        kind = "volume" if self._ndim(files[0]) == 3 else "slice"
        cases: dict[str, list[tuple[Path, int]]] = {}
        if kind == "slice":
            for p in files:
                stem = _stem(p.name)
                m = SLICE_RE.match(stem)
                cid = m.group("case") if m else stem
                cases.setdefault(cid, []).append((p, 0))
            for cid in cases:
                cases[cid].sort(key=lambda t: _natural_key(t[0].name))
        else:
            for p in files:
                cases[_stem(p.name)] = [(p, -1)]
        return {"folder": folder, "list": list_path, "kind": kind, "cases": cases,
                "files": files}

    def _resolve(self, folder: Path, name: str, list_path: Path) -> Path:
        for cand in (name, *(name + s for s in SUFFIXES)):
            p = folder / cand
            if p.is_file():
                return p
        raise DataError(
            f"{list_path} lists {name!r} but {folder / name}(.npz|.npy.h5) does not exist; "
            "restore the file or remove the line"
        )

    def _ndim(self, path: Path) -> int:
        if path.name.endswith(".npz"):
            arr = io.load_npz(path, [self.image_key])[self.image_key]
            return arr.ndim
        with io.open_h5(path) as f:
            return len(io.h5_dataset(f, self.image_key, path).shape)

    # -- reading ---------------------------------------------------------------------
    def _read_pair(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        keys = [self.image_key, self.label_key]
        data = io.load_npz(path, keys) if path.name.endswith(".npz") else io.load_h5(path, keys)
        image, label = data[self.image_key], data[self.label_key]
        self._check_pair(image, label, path)
        return image.astype(np.float32, copy=False), check_label(label, self.num_classes, str(path))

    def _check_pair(self, image: np.ndarray, label: np.ndarray, path: Path) -> None:
        check_shapes(image.shape, label.shape, str(path))
        if image.ndim not in (2, 3):
            raise DataError(f"{path}: expected a 2-D slice or a 3-D volume, got {image.shape}")
        check_image(image, str(path))

    # -- contract --------------------------------------------------------------------
    def splits(self) -> list[str]:
        return [s for s in self.split_dirs if s in self._splits]

    def cases(self, split: str) -> list[str]:
        self._check_split(split)
        return sorted(self._splits[split]["cases"], key=_natural_key)

    def _parts(self, case_id: str, split: str) -> list[tuple[Path, int]]:
        self._check_split(split)
        parts = self._splits[split]["cases"].get(case_id)
        if parts is None:
            raise DataError(f"{self.name}: no case {case_id!r} in split {split!r} of {self.root}")
        return parts

    def load_case(self, case_id: str, split: str) -> Case:
        parts = self._parts(case_id, split)
        if self._splits[split]["kind"] == "volume":
            image, label = self._read_pair(parts[0][0])
            if image.ndim != 3:
                raise DataError(f"{parts[0][0]}: expected a D x H x W volume, got {image.shape}")
        else:
            pairs = [self._read_pair(p) for p, _ in parts]
            shapes = {img.shape for img, _ in pairs}
            if len(shapes) != 1 or next(iter(shapes)).__len__() != 2:
                raise DataError(
                    f"{self.name}: slices of case {case_id!r} have shapes {sorted(shapes)}; "
                    "all slices of a case must be 2-D with one size"
                )
            image = np.stack([img for img, _ in pairs])
            label = np.stack([lab for _, lab in pairs])
        return Case(
            id=case_id,
            image=image[None].astype(np.float32, copy=False),
            label=label.astype(np.int64, copy=False),
            class_names=list(self.class_names),
        )

    def _slice_index(self, split: str, cases: Sequence[str]) -> list[tuple[str, int]]:
        info = self._splits[split]
        index: list[tuple[str, int]] = []
        for cid in cases:
            parts = info["cases"][cid]
            if info["kind"] == "slice":
                index.extend((cid, z) for z in range(len(parts)))
            else:
                path = parts[0][0]
                if path.name.endswith(".npz"):
                    depth = io.load_npz(path, [self.image_key])[self.image_key].shape[0]
                else:
                    with io.open_h5(path) as f:
                        depth = io.h5_dataset(f, self.image_key, path).shape[0]
                index.extend((cid, z) for z in range(depth))
        return index

    def _read_slice(self, split, case_id, z, store):
        info = self._splits[split]
        parts = info["cases"][case_id]
        if info["kind"] == "slice":
            image, label = self._read_pair(parts[z][0])
            if image.ndim != 2:
                raise DataError(f"{parts[z][0]}: expected a 2-D slice, got {image.shape}")
            return image[None], label
        path = parts[0][0]
        if path.name.endswith(".npz"):  # npz cannot be read partially: keep the volume
            vol = store.get(case_id)
            if vol is None:
                if len(store) >= 4:
                    store.pop(next(iter(store)))
                vol = store[case_id] = self._read_pair(path)
            return vol[0][z][None], vol[1][z]
        handle = store.get(case_id)
        if handle is None:
            handle = store[case_id] = io.open_h5(path)
        try:
            image = np.asarray(io.h5_dataset(handle, self.image_key, path)[z])
            label = np.asarray(io.h5_dataset(handle, self.label_key, path)[z])
        except DataError:
            raise
        except Exception as exc:
            raise DataError(f"{path}: cannot read slice {z} ({exc}); the file may be truncated") from exc
        self._check_pair(image, label, path)
        return image.astype(np.float32)[None], check_label(label, self.num_classes, f"{path}[{z}]")


SYNAPSE_CLASSES = [
    "background", "aorta", "gallbladder", "left kidney", "right kidney",
    "liver", "pancreas", "spleen", "stomach",
]


class SynapseDataset(ListedDataset):
    """TransUNet's Synapse layout: ``train_npz/caseXXXX_sliceNNN.npz`` (``image``,
    ``label`` 512 x 512, image already in [0, 1]), ``test_vol_h5/caseXXXX.npy.h5`` (``image``,
    ``label`` D x 512 x 512), lists ``train.txt`` / ``test_vol.txt`` in ROOT, ROOT/lists,
    ROOT/lists/lists_Synapse or ROOT/lists_Synapse (or ``list_dir``)."""

    name = "synapse"
    modality = "CT"
    recipe = "synapse"
    spatial_dims = 3
    class_list = SYNAPSE_CLASSES
    split_dirs = {"train": ("train_npz",), "test": ("test_vol_h5", "test_vol")}
    list_files = {"train": ("train.txt",), "test": ("test_vol.txt", "test.txt")}
    list_dir_names = ("lists", "lists/lists_Synapse", "lists_Synapse")


class AVTDataset(ListedDataset):
    """Aortic vessel tree in the Synapse layout: ``train_npz/``, ``test_vol/*.npy.h5``;
    2 classes (background, aorta)."""

    name = "avt"
    modality = "CT"
    recipe = "avt"
    spatial_dims = 3
    class_list = ["background", "aorta"]
    split_dirs = {"train": ("train_npz",), "test": ("test_vol", "test_vol_h5")}
    list_files = {"train": ("train.txt",), "test": ("test_vol.txt", "test.txt")}
    list_dir_names = ("lists", "lists/lists_AVT", "lists_AVT")


class ACDCDataset(ListedDataset):
    """ACDC in the SelfReg-UNet / EMCAD npz layout: ``train/``, ``valid/``, ``test/`` with
    ``img`` / ``label`` arrays (train and valid: 2-D slices; test: volumes), lists
    ``train.txt``, ``valid.txt``, ``test.txt`` in ROOT, ROOT/lists_ACDC or ROOT/lists;
    the ``valid`` folder is the ``"val"`` split;
    4 classes (background, right ventricle, myocardium, left ventricle)."""

    name = "acdc"
    modality = "MRI"
    recipe = "acdc"
    spatial_dims = 3
    image_key = "img"
    class_list = ["background", "right ventricle", "myocardium", "left ventricle"]
    split_dirs = {"train": ("train",), "val": ("valid", "val"), "test": ("test",)}
    list_files = {"train": ("train.txt",), "val": ("valid.txt", "val.txt"),
                  "test": ("test.txt",)}
    list_dir_names = ("lists_ACDC", "lists")
