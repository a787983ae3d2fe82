"""nnU-Net v2 raw folders and the Medical Segmentation Decathlon (MSD) variant.

v2 layout::

    ROOT/dataset.json        {"channel_names": {"0": "CT"}, "labels": {"background": 0, ...},
                              "numTraining": N, "file_ending": ".nii.gz"}
    ROOT/imagesTr/{case}_0000.nii.gz  (+ _0001, ... for more channels)
    ROOT/labelsTr/{case}.nii.gz
    ROOT/imagesTs/{case}_0000.nii.gz  (optional; labels in ROOT/labelsTs/ if present)

MSD layout: ``dataset.json`` with ``"modality"``, ``"labels": {"0": "background", ...}``
and a ``"training": [{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}]``
list (multi-channel images are 4-D, channel last), ``"test": ["./imagesTs/y.nii.gz"]``.

Image files may be NIfTI, NRRD or MetaImage (``"file_ending"`` in dataset.json, as nnU-Net's
SimpleITK reader allows), read by :func:`unetzoo.data.imageio.read_file`.

Volumes are reoriented so that axis 0 (``D``) is the slicing axis: the through-plane axis
(largest voxel spacing) unless ``slice_axis`` names a file axis (0, 1, 2 = i, j, k). The
remaining two axes keep file order reversed, so for the usual k-slicing the arrays are
``(k, j, i)`` like SimpleITK's ``(z, y, x)``. ``Case.affine`` is the file affine with its
columns permuted the same way (it maps ``(d, h, w)`` indices to world mm).

Ignore label (nnU-Net v2): a label named ``"ignore"`` in dataset.json, which must have the
highest value, marks voxels that are not annotated. It is not a class: ``class_names`` and
the model's outputs hold the real classes only, and ``ignore_label`` (its value, equal to
``num_classes``) stays in the label arrays, where the loss (``ignore_index``) and the metrics
leave those voxels out. ``regions`` (lists of values per label) are refused.

Speed: the first access to a case writes its normalised image and label as ``.npy`` files
to a cache folder, ``$UNETZOO_CACHE/nnunet/<key>/`` (default ``~/.cache/unetzoo``), keyed
by the dataset's absolute path and the reader options; each case's entry also records the
size and mtime of its source files, so an edited file is re-read. The raw folder is never
written to (nnU-Net users expect raw folders untouched) unless ``cache_dir`` names a
folder inside it. Training then memory-maps one slice per sample instead of re-reading a
compressed volume. ``unetzoo prepare nnunet ROOT`` builds the cache ahead.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unetzoo.data import imageio, io
from unetzoo.data.base import Case, SegDataset, check_image, check_label, check_shapes
from unetzoo.data.geometry import check_same_geometry, reorient
from unetzoo.data.preprocessing import SYNAPSE_WINDOW, normalize, spec_for_channel
from unetzoo.errors import DataError

CACHE_VERSION = 4  # 3: label/channel affines checked on build; 4: ignore label kept

#: The label name nnU-Net v2 reserves for unannotated voxels (must be the highest value).
IGNORE_NAME = "ignore"
#: Labels a dataset.json may declare: more is a typo or a hostile file (5000 classes ran
#: for minutes before failing); TotalSegmentator, the largest public set, has 118.
MAX_CLASSES = 512


def _is_writable_dir(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK)


class NnUNetDataset(SegDataset):
    """Reader for nnU-Net v2 raw and MSD folders (see module docstring).

    Options: ``slice_axis`` (file axis 0/1/2 or None = largest spacing), ``ct_window``
    (CT clip window in HU, default [-125, 275]), ``mri_norm`` (``"zscore"`` or
    ``"percentile"``), ``cache_dir`` (slice cache folder; default the user cache, never
    the raw folder), ``preprocessing`` (a full spec that replaces the one derived from
    ``channel_names``).

    ``ignore_label`` is the value of dataset.json's ``"ignore"`` label (None without one);
    it is ``num_classes``, one above the last real class.
    """

    name = "nnunet"
    spatial_dims = 3
    recipe = "default"
    ignore_label: int | None = None

    def __init__(
        self,
        root: str | Path,
        *,
        slice_axis: int | None = None,
        ct_window: Sequence[float] = SYNAPSE_WINDOW,
        mri_norm: str = "zscore",
        cache_dir: str | Path | None = None,
        preprocessing: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(root)
        if slice_axis is not None and int(slice_axis) not in (0, 1, 2):
            raise DataError(f"slice_axis must be 0, 1, 2 or None, got {slice_axis!r}")
        self.slice_axis = None if slice_axis is None else int(slice_axis)
        if not self.root.is_dir():
            raise DataError(f"nnU-Net dataset folder not found: {self.root}")
        self.meta_path = self.root / "dataset.json"
        meta = io.read_json(
            io.require_file(
                self.meta_path, "dataset.json", "an nnU-Net raw folder needs dataset.json"
            )
        )
        self.meta = meta
        #: dataset.json's ``name`` (report titles); None when absent.
        title = meta.get("name")
        self.title = title.strip() if isinstance(title, str) and title.strip() else None
        self.file_ending = str(meta.get("file_ending", ".nii.gz"))
        self.class_names = self._parse_labels(meta)
        channels = meta.get("channel_names", meta.get("modality"))
        if not isinstance(channels, dict) or not channels:
            raise DataError(
                f"{self.meta_path}: needs a non-empty 'channel_names' (v2) or 'modality' "
                "(MSD) mapping, e.g. {\"0\": \"CT\"}"
            )
        try:
            keys = sorted(channels, key=int)
        except ValueError as exc:
            raise DataError(f"{self.meta_path}: channel keys must be '0', '1', ...") from exc
        self.channel_names = [str(channels[k]) for k in keys]
        self.in_channels = len(self.channel_names)
        self.modality = "CT" if all(c.upper() == "CT" for c in self.channel_names) else "MRI"
        if preprocessing is not None:
            self.preprocessing = dict(preprocessing)
        else:
            specs = [
                spec_for_channel(c, ct_window=tuple(ct_window), mri=mri_norm)
                for c in self.channel_names
            ]
            self.preprocessing = (
                specs[0] if len(specs) == 1 else {"kind": "channels", "channels": specs}
            )
        self._files = self._discover(meta)
        self._cache_dir = self._choose_cache(cache_dir)

    # -- dataset.json ----------------------------------------------------------------
    def _parse_labels(self, meta: dict[str, Any]) -> list[str]:
        labels = meta.get("labels")
        if not isinstance(labels, dict) or not labels:
            raise DataError(f"{self.meta_path}: needs a non-empty 'labels' mapping")
        if len(labels) > MAX_CLASSES:
            raise DataError(f"{self.meta_path}: {len(labels)} labels, more than the "
                            f"{MAX_CLASSES} a segmentation model here can have")
        by_value: dict[int, str] = {}
        for k, v in labels.items():
            if isinstance(v, (list, tuple)):
                raise DataError(
                    f"{self.meta_path}: region-based label {k!r}: {v} is not supported; "
                    "give one integer value per class"
                )
            try:
                if isinstance(v, str):  # MSD: {"0": "background"}
                    by_value[int(k)] = v
                else:  # v2: {"background": 0}
                    by_value[int(v)] = str(k)
            except (TypeError, ValueError) as exc:
                raise DataError(f"{self.meta_path}: bad label entry {k!r}: {v!r}") from exc
        values = sorted(by_value)
        if values != list(range(len(values))):
            raise DataError(
                f"{self.meta_path}: label values {values} must be consecutive from 0 "
                "(0 = background)"
            )
        ignore = [v for v, n in by_value.items() if n == IGNORE_NAME]
        if ignore:
            # nnU-Net v2: the ignore label is not a class and must be the highest value.
            if ignore[0] != values[-1] or ignore[0] == 0:
                raise DataError(
                    f"{self.meta_path}: the 'ignore' label has value {ignore[0]} but must be "
                    f"the highest label value ({values[-1]}) and not background"
                )
            self.ignore_label = ignore[0]
            values = values[:-1]
        return [by_value[i] for i in values]

    def _discover(self, meta: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
        """``{split: {case: {"images": [paths], "label": path | None}}}``."""
        files: dict[str, dict[str, dict[str, Any]]] = {}
        if isinstance(meta.get("training"), list):  # MSD variant
            tr: dict[str, dict[str, Any]] = {}
            for item in meta["training"]:
                if not isinstance(item, dict) or "image" not in item or "label" not in item:
                    raise DataError(
                        f"{self.meta_path}: each 'training' entry needs 'image' and 'label'"
                    )
                img = (self.root / item["image"]).resolve()
                lab = (self.root / item["label"]).resolve()
                for p, what in ((img, "image"), (lab, "label")):
                    io.require_file(
                        p, f"{what} listed in dataset.json",
                        "fix the 'training' list or restore the file",
                    )
                tr[self._strip(img.name)] = {"images": [img], "label": lab, "msd": True}
            files["train"] = tr
            ts: dict[str, dict[str, Any]] = {}
            for item in meta.get("test", []) or []:
                rel = item if isinstance(item, str) else item.get("image", "")
                img = (self.root / rel).resolve()
                io.require_file(img, "test image listed in dataset.json")
                lab = self.root / "labelsTs" / img.name
                ts[self._strip(img.name)] = {
                    "images": [img], "label": lab if lab.is_file() else None, "msd": True,
                }
            if ts:
                files["test"] = ts
        else:
            files["train"] = self._discover_v2("imagesTr", "labelsTr", need_labels=True)
            if (self.root / "imagesTs").is_dir():
                ts = self._discover_v2("imagesTs", "labelsTs", need_labels=False)
                if ts:
                    files["test"] = ts
        if not files.get("train"):
            raise DataError(
                f"{self.root}: no training cases found (expected imagesTr/"
                f"{{case}}_0000{self.file_ending} files or a 'training' list in dataset.json)"
            )
        n = meta.get("numTraining")
        if n is not None and (not isinstance(n, int) or isinstance(n, bool)):
            raise DataError(f"{self.meta_path}: numTraining must be a whole number, got {n!r}")
        if n is not None and int(n) != len(files["train"]):
            raise DataError(
                f"{self.meta_path}: numTraining is {n} but {len(files['train'])} training "
                "cases were found; fix numTraining or the imagesTr/labelsTr files"
            )
        return files

    def _strip(self, filename: str) -> str:
        for ending in (self.file_ending, ".nii.gz", ".nii"):
            if filename.endswith(ending):
                return filename[: -len(ending)]
        return Path(filename).stem

    def _discover_v2(self, img_dir: str, lab_dir: str, *, need_labels: bool):
        idir, ldir = self.root / img_dir, self.root / lab_dir
        if not idir.is_dir():
            raise DataError(f"{self.root}: missing folder {img_dir}/ of the nnU-Net layout")
        suffix = "_0000" + self.file_ending
        cases = sorted(p.name[: -len(suffix)] for p in idir.iterdir() if p.name.endswith(suffix))
        out: dict[str, dict[str, Any]] = {}
        for cid in cases:
            imgs = [idir / f"{cid}_{c:04d}{self.file_ending}" for c in range(self.in_channels)]
            for p in imgs:
                io.require_file(
                    p, f"channel file of case {cid!r}",
                    f"dataset.json declares {self.in_channels} channel(s)",
                )
            lab = ldir / f"{cid}{self.file_ending}"
            if not lab.is_file():
                if need_labels:
                    raise DataError(f"missing label file {lab} for image {imgs[0]}")
                lab = None
            out[cid] = {"images": imgs, "label": lab, "msd": False}
        return out

    # -- cache -----------------------------------------------------------------------
    def _config_key(self) -> str:
        blob = json.dumps(
            {
                "v": CACHE_VERSION,
                "root": str(self.root.resolve()),
                "pre": self.preprocessing,
                "axis": self.slice_axis,
                "classes": self.num_classes,
                "ignore": self.ignore_label,
            },
            sort_keys=True,
        )
        return hashlib.sha1(blob.encode()).hexdigest()[:12]

    def _choose_cache(self, cache_dir: str | Path | None) -> Path:
        # The user cache, keyed by the absolute root and the reader options: the raw
        # folder stays untouched unless the user names a folder inside it.
        key = self._config_key()
        if cache_dir is not None:
            path = Path(cache_dir) / key
            if not _is_writable_dir(path):
                raise DataError(f"cache_dir {cache_dir} is not writable; pick another folder")
            return path
        path = io.cache_root() / "nnunet" / key
        if not _is_writable_dir(path):
            raise DataError(
                f"the slice cache {path.parent} is not writable; set UNETZOO_CACHE or pass "
                "--dataset-option cache_dir=DIR"
            )
        return path

    @property
    def cache_dir(self) -> Path:
        return self._cache_dir

    def _signature(self, entry: dict[str, Any]) -> list[list[Any]]:
        paths = list(entry["images"]) + ([entry["label"]] if entry["label"] else [])
        sig = []
        for p in paths:
            st = Path(p).stat()
            sig.append([str(p), st.st_size, st.st_mtime_ns])
        return sig

    def _cache_paths(self, split: str, cid: str) -> tuple[Path, Path, Path]:
        d = self._cache_dir / split
        return d / f"{cid}.img.npy", d / f"{cid}.lab.npy", d / f"{cid}.json"

    def _cached_meta(self, split: str, cid: str) -> dict[str, Any] | None:
        entry = self._entry(cid, split)
        img_p, lab_p, meta_p = self._cache_paths(split, cid)
        if not (meta_p.is_file() and img_p.is_file()):
            return None
        try:
            meta = json.loads(meta_p.read_text())
        except (OSError, ValueError):
            return None
        if meta.get("signature") != self._signature(entry):
            return None
        if meta.get("has_label") and not lab_p.is_file():
            return None
        return meta

    def build_cache(self, split: str, cid: str) -> dict[str, Any]:
        """Read, check, normalise and cache one case; returns its cache metadata."""
        meta = self._cached_meta(split, cid)
        if meta is not None:
            return meta
        case = self._read_case(cid, split)
        img_p, lab_p, meta_p = self._cache_paths(split, cid)
        io.atomic_save_npy(img_p, np.ascontiguousarray(case.image, dtype=np.float32))
        if case.label is not None:
            lab_dtype = np.uint8 if self.num_classes < 256 else np.int16  # room for ignore
            io.atomic_save_npy(lab_p, np.ascontiguousarray(case.label, dtype=lab_dtype))
        meta = {
            "signature": self._signature(self._entry(cid, split)),
            "shape": list(case.image.shape),
            "spacing": list(case.spacing),
            "affine": np.asarray(case.affine).tolist(),
            "has_label": case.label is not None,
            "axes": list(case.axes),
        }
        io.atomic_write_text(meta_p, json.dumps(meta))
        return meta

    def prepare(self, splits: Sequence[str] | None = None, verbose: bool = False) -> int:
        """Build the slice cache of every case of ``splits`` (default all); returns count."""
        n = 0
        for split in splits or self.splits():
            self._check_split(split)
            for cid in self.cases(split):
                self.build_cache(split, cid)
                n += 1
                if verbose:
                    print(f"cached {split}/{cid}", file=sys.stderr)
        return n

    # -- contract --------------------------------------------------------------------
    def splits(self) -> list[str]:
        return [s for s in ("train", "test") if self._files.get(s)]

    def cases(self, split: str) -> list[str]:
        self._check_split(split)
        return sorted(self._files[split])

    def _entry(self, cid: str, split: str) -> dict[str, Any]:
        self._check_split(split)
        try:
            return self._files[split][cid]
        except KeyError as exc:
            raise DataError(
                f"{self.name}: no case {cid!r} in split {split!r} of {self.root}"
            ) from exc

    def _read_case(self, cid: str, split: str) -> Case:
        """Read a case from the NIfTI files (no cache)."""
        entry = self._entry(cid, split)
        chans: list[np.ndarray] = []
        affine = spacing = order = None
        ref_shape = ref_affine = None
        for p in entry["images"]:
            arr, aff, zooms = imageio.read_file(p)  # NIfTI, NRRD, MHA
            if ref_affine is None:
                ref_affine = aff
            else:
                check_same_geometry(ref_affine, aff, p, entry["images"][0])
            if arr.ndim == 4 and entry["msd"]:
                parts = [arr[..., c] for c in range(arr.shape[3])]
            elif arr.ndim == 3:
                parts = [arr]
            else:
                raise DataError(
                    f"{p}: expected a 3-D volume{' or 4-D (channels last)' if entry['msd'] else ''}"
                    f", got shape {arr.shape}"
                )
            if ref_shape is None:
                ref_shape = arr.shape[:3]
            elif arr.shape[:3] != ref_shape:
                raise DataError(
                    f"{p}: shape {arr.shape[:3]} differs from the first channel {ref_shape}"
                )
            for part in parts:
                vol, affine, spacing, order = reorient(part, aff, zooms, self.slice_axis)
                chans.append(vol)
        if len(chans) != self.in_channels:
            raise DataError(
                f"{entry['images'][0]}: {len(chans)} channel(s) but dataset.json declares "
                f"{self.in_channels}; fix channel_names/modality"
            )
        image = np.stack(chans).astype(np.float32)
        check_image(image, str(entry["images"][0]))
        image = normalize(image, self.preprocessing)
        label = None
        if entry["label"] is not None:
            larr, laff, lz = imageio.read_file(entry["label"])
            if larr.ndim == 4 and larr.shape[3] == 1:
                larr = larr[..., 0]
            check_shapes(ref_shape, larr.shape, f"{entry['label']} vs {entry['images'][0]}")
            check_same_geometry(ref_affine, laff, entry["label"], entry["images"][0])
            lab, _, _, _ = reorient(larr, laff, lz, self.slice_axis)
            # The ignore label (one above the last class) is kept for the loss and metrics.
            n_values = self.num_classes + (self.ignore_label is not None)
            label = check_label(np.asarray(lab), n_values, str(entry["label"]))
        return Case(
            id=cid,
            image=np.ascontiguousarray(image),
            label=None if label is None else np.ascontiguousarray(label),
            spacing=spacing,
            affine=affine,
            class_names=list(self.class_names),
            axes=order,
            ignore_label=self.ignore_label,
        )

    def read_case(self, case_id: str, split: str) -> Case:
        """The case read from its files, bypassing the slice cache (the fingerprint's
        one pass over raw intensities, :mod:`unetzoo.data.fingerprint`)."""
        return self._read_case(case_id, split)

    def _open_cached(self, split: str, cid: str, mmap_mode: str | None = None):
        """``(meta, image, label)`` from the cache; a damaged cache file (a kill or a full
        disk mid-write, a copy cut short) is rebuilt from the NIfTI files once."""
        for attempt in (0, 1):
            meta = self.build_cache(split, cid)
            img_p, lab_p, meta_p = self._cache_paths(split, cid)
            try:
                image = np.load(img_p, mmap_mode=mmap_mode, allow_pickle=False)
                label = np.load(lab_p, mmap_mode=mmap_mode, allow_pickle=False) if meta["has_label"] else None
                if list(image.shape) != list(meta["shape"]) or (
                    label is not None and tuple(label.shape) != tuple(image.shape[1:])
                ):
                    raise ValueError(f"shape {image.shape} but the cache records {meta['shape']}")
                return meta, image, label
            except (ValueError, OSError, EOFError) as exc:
                if attempt:
                    raise DataError(
                        f"{img_p}: the slice cache cannot be read even after a rebuild ({exc}); "
                        f"delete {self._cache_dir} and check the disk"
                    ) from exc
                meta_p.unlink(missing_ok=True)  # forces build_cache to re-read the NIfTI files
        raise AssertionError("unreachable")  # pragma: no cover

    def load_case(self, case_id: str, split: str) -> Case:
        meta, image, label = self._open_cached(split, case_id)
        label = None if label is None else label.astype(np.int64)
        return Case(
            id=case_id,
            image=image,
            label=label,
            spacing=tuple(float(s) for s in meta["spacing"]),
            affine=np.asarray(meta["affine"], dtype=np.float64),
            class_names=list(self.class_names),
            axes=tuple(int(a) for a in meta["axes"]),
            ignore_label=self.ignore_label,
        )

    def case_spacing(self, case_id: str, split: str) -> tuple[float, float, float]:
        """The case's ``(sz, sy, sx)`` spacing (mm) from its cache record, without reading
        the image (the trainer's median spacing for the inference spec)."""
        return tuple(float(s) for s in self.build_cache(split, case_id)["spacing"])

    def case_affine(self, case_id: str, split: str) -> np.ndarray:
        """The case's ``(d, h, w)`` affine from its cache record (the training orientation
        of the inference spec, :mod:`unetzoo.engine.training_inputs`)."""
        return np.asarray(self.build_cache(split, case_id)["affine"], dtype=np.float64)

    def raw_image(self, case_id: str, split: str) -> np.ndarray:
        """The case's ``(C, ...)`` intensities before normalisation, in file order (the
        intensity fingerprint of the inference spec)."""
        chans = []
        for p in self._entry(case_id, split)["images"]:
            arr = imageio.read_file(p)[0]
            chans += [arr[..., c] for c in range(arr.shape[3])] if arr.ndim == 4 else [arr]
        return np.stack(chans).astype(np.float32)

    def _slice_index(self, split: str, cases: Sequence[str]) -> list[tuple[str, int]]:
        index: list[tuple[str, int]] = []
        for cid in cases:
            meta = self.build_cache(split, cid)
            if not meta["has_label"]:
                raise DataError(
                    f"{self.name}: case {cid!r} of split {split!r} has no label file; "
                    "training slices need labels"
                )
            index.extend((cid, z) for z in range(int(meta["shape"][1])))
        return index

    def _read_slice(self, split, case_id, z, store):
        arrays = store.get(case_id)
        if arrays is None:
            # Memory-mapped: one slice is read per sample, shared through the page cache.
            _, img, lab = self._open_cached(split, case_id, mmap_mode="r")
            arrays = store[case_id] = (img, lab)
        img, lab = arrays
        return np.array(img[:, z], dtype=np.float32), np.array(lab[z], dtype=np.int64)

