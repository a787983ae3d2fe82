"""Medical image files of every common format, read and written in one convention.

Formats: NIfTI (``.nii``, ``.nii.gz``, read by nibabel exactly as
:func:`unetzoo.data.io.load_nifti`), NRRD (``.nrrd``, ``.nhdr``), MetaImage (``.mha``,
``.mhd``) and DICOM series (a folder, or one ``.dcm`` file of the series) through
SimpleITK.

Every reader returns what :func:`unetzoo.data.io.load_nifti` returns, so the rest of the
pipeline (:func:`unetzoo.data.geometry.reorient`, prediction, evaluation) is unchanged:

* ``array`` in file index order ``(i, j, k[, c])``. SimpleITK hands out ``(z, y, x)``
  (index order reversed) and vector pixels last; both are turned back to ``(x, y, z, c)``.
* ``affine``: 4x4 map from ``(i, j, k)`` indices to world millimetres in nibabel's
  **RAS+** convention. ITK's world is **LPS+** (DICOM's), so
  ``affine = diag(-1, -1, 1) @ [direction @ diag(spacing) | origin]``.
* ``zooms``: voxel size per file axis (``(sx, sy, sz)``).

:func:`save_labels` writes a label map in the format its path names, with the geometry of
``affine`` (origin, spacing, direction); :func:`output_ending` picks that format for an
input: the input's own ending, ``.nii.gz`` for DICOM series and 2-D pictures (a label map
is no DICOM image, and nnU-Net users expect NIfTI). :func:`save_case_nifti`, the
pipeline's one label writer, puts a ``(D, H, W)`` prediction back in the input's voxel
order and writes it through :func:`save_labels`.

:func:`group_cases` turns files and folders into cases the nnU-Net way: ``CASE_0000``,
``CASE_0001`` ... are the channels of case ``CASE``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from unetzoo.data import io
from unetzoo.data.geometry import array_to_file, check_same_geometry
from unetzoo.errors import DataError

NIFTI_ENDINGS = (".nii.gz", ".nii")
ITK_ENDINGS = (".nrrd", ".nhdr", ".mha", ".mhd")
DICOM_ENDINGS = (".dcm",)
VOLUME_ENDINGS = NIFTI_ENDINGS + ITK_ENDINGS
PICTURE_ENDINGS = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
# ITK's LPS+ world <-> nibabel's RAS+ world: flip the first two world axes.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def file_ending(path: str | Path) -> str:
    """The format ending of ``path`` (``".nii.gz"``, ``".nrrd"``, ...), ``"dicom"`` for a
    DICOM file or folder, ``""`` when unknown."""
    p = Path(path)
    name = p.name.lower()
    for end in VOLUME_ENDINGS + DICOM_ENDINGS + PICTURE_ENDINGS:
        if name.endswith(end):
            return "dicom" if end in DICOM_ENDINGS else end
    if p.is_dir():
        return "dicom"
    return ""


def strip_ending(path: str | Path) -> str:
    """File name without its format ending (``a_0000.nii.gz`` -> ``a_0000``)."""
    name = Path(path).name
    for end in VOLUME_ENDINGS + DICOM_ENDINGS + PICTURE_ENDINGS:
        if name.lower().endswith(end):
            return name[: -len(end)]
    return name


def output_ending(path: str | Path) -> str:
    """The ending a label map of input ``path`` is written with: the input's own for NIfTI,
    NRRD and MetaImage (``.nhdr``/``.mhd`` as their one-file forms ``.nrrd``/``.mha``),
    ``.nii.gz`` for DICOM series and 2-D pictures."""
    end = file_ending(path)
    if end in (".nii.gz", ".nii", ".nrrd", ".mha"):
        return end
    return {".nhdr": ".nrrd", ".mhd": ".mha"}.get(end, ".nii.gz")


def _sitk():
    # Imported on first use: SimpleITK (a declared dependency) is slow to import and
    # NIfTI-only runs never need it.
    import SimpleITK as sitk

    return sitk


# -- reading --------------------------------------------------------------------------------
def load_medical_image(path: str | Path) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """``(array, affine, zooms)`` of a NIfTI / NRRD / MetaImage file or a DICOM series.

    The same contract as :func:`unetzoo.data.io.load_nifti` (see the module docstring);
    unreadable files and unknown formats are one-line :class:`DataError` messages.
    """
    p = Path(path)
    end = file_ending(p)
    if end in NIFTI_ENDINGS:
        return io.load_nifti(p)
    if end in ITK_ENDINGS:
        io.require_file(p, f"{end} image")
        io.check_voxels(image_shape(p), p)  # from the header, before decompressing
        return _from_itk(_read_itk(p, lambda s: s.ReadImage(str(p))), p)
    if end == "dicom":
        io.check_voxels(image_shape(p), p)
        return _from_itk(_read_dicom_series(p), p)
    raise DataError(
        f"{p}: unsupported medical image format; give NIfTI (.nii, .nii.gz), NRRD (.nrrd), "
        "MetaImage (.mha, .mhd) or a DICOM series folder"
    )


def image_shape(path: str | Path) -> tuple[int, ...]:
    """Array shape ``(i, j[, k][, c])`` that :func:`load_medical_image` would return, read
    from the header alone (nothing decoded; a DICOM series from its first file and its
    file count)."""
    p = Path(path)
    end = file_ending(p)
    if end in NIFTI_ENDINGS:
        return io.nifti_shape(p)

    def info(sitk, f: Path) -> tuple[int, ...]:
        r = sitk.ImageFileReader()
        r.SetFileName(str(f))
        r.ReadImageInformation()
        comps = r.GetNumberOfComponents()
        return tuple(int(n) for n in r.GetSize()) + ((comps,) if comps > 1 else ())

    if end in ITK_ENDINGS:
        io.require_file(p, f"{end} image")
        return _read_itk(p, lambda sitk: info(sitk, p))
    if end == "dicom":
        folder = p if p.is_dir() else p.parent

        def series(sitk) -> tuple[int, ...]:
            ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
            if not ids:
                raise DataError(f"{folder}: no DICOM series found; give a folder of .dcm files")
            files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), ids[0])
            first = info(sitk, Path(files[0]))
            return (*first[:2], len(files)) if len(files) > 1 else first

        return _read_itk(p, series)
    raise DataError(
        f"{p}: unsupported medical image format; give NIfTI (.nii, .nii.gz), NRRD (.nrrd), "
        "MetaImage (.mha, .mhd) or a DICOM series folder"
    )


def _read_itk(p: Path, read):
    sitk = _sitk()
    try:
        return read(sitk)
    except RuntimeError as exc:  # SimpleITK raises RuntimeError with a multi-line ITK dump
        first = str(exc).strip().splitlines()
        detail = next((ln.strip() for ln in first if "rror" in ln or "ould not" in ln), "")
        raise DataError(
            f"{p}: unreadable or truncated image ({detail or 'ITK could not read it'}); "
            "re-create or re-export it"
        ) from exc


def _read_dicom_series(p: Path):
    folder = p if p.is_dir() else p.parent
    if not folder.is_dir():
        raise DataError(f"DICOM input not found: {p}")

    def read(sitk):
        reader = sitk.ImageSeriesReader()
        ids = list(reader.GetGDCMSeriesIDs(str(folder)))
        if not ids:
            raise DataError(f"{folder}: no DICOM series found; give a folder of .dcm files")
        if p.is_file():
            # The series this file belongs to.
            one = sitk.ImageFileReader()
            one.SetFileName(str(p))
            one.ReadImageInformation()
            sid = one.GetMetaData("0020|000e").strip() if one.HasMetaDataKey("0020|000e") else ""
            ids = [s for s in ids if s.strip() == sid] or ids[:1]
        if len(ids) > 1:
            raise DataError(
                f"{folder}: holds {len(ids)} DICOM series ({', '.join(ids[:3])}"
                f"{', ...' if len(ids) > 3 else ''}); put each series in its own folder"
            )
        files = reader.GetGDCMSeriesFileNames(str(folder), ids[0])
        reader.SetFileNames(files)
        return reader.Execute()

    return _read_itk(p, read)


def _from_itk(img, p: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    sitk = _sitk()
    dim = img.GetDimension()
    arr = sitk.GetArrayFromImage(img)  # (z, y, x[, c]) -- index order reversed
    n_comp = img.GetNumberOfComponentsPerPixel()
    spatial = list(range(dim))[::-1]
    perm = spatial + ([dim] if n_comp > 1 else [])
    arr = np.transpose(arr, perm)
    affine = geometry_to_affine(img.GetOrigin(), img.GetSpacing(), img.GetDirection())
    zooms = tuple(float(s) for s in img.GetSpacing())
    return arr, affine, zooms


def geometry_to_affine(
    origin: Sequence[float], spacing: Sequence[float], direction: Sequence[float]
) -> np.ndarray:
    """4x4 RAS affine of an ITK image geometry (LPS origin, spacing, row-major direction).

    2-D geometries are embedded with a third axis of spacing 1 along world z; 4-D ones
    keep their first three axes.
    """
    n = len(spacing)
    d = np.asarray(direction, dtype=np.float64).reshape(n, n)
    m = min(n, 3)
    lin = np.eye(3)
    lin[:m, :m] = d[:m, :m] * np.asarray(spacing[:m], dtype=np.float64)[None, :]
    org = np.zeros(3)
    org[:m] = np.asarray(origin[:m], dtype=np.float64)
    aff = np.eye(4)
    aff[:3, :3] = _LPS_TO_RAS @ lin
    aff[:3, 3] = _LPS_TO_RAS @ org
    return aff


def affine_to_geometry(
    affine: np.ndarray, ndim: int = 3
) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """``(origin, spacing, direction)`` in ITK's LPS convention for a RAS ``affine``.

    Spacing is the length of each index axis' column, direction the unit columns, so an
    affine with shear is approximated by its nearest orthogonal-axis geometry (as ITK
    stores it).
    """
    a = np.asarray(affine, dtype=np.float64)
    lin = _LPS_TO_RAS @ a[:3, :3]
    org = _LPS_TO_RAS @ a[:3, 3]
    spacing = np.linalg.norm(lin, axis=0)
    spacing[spacing == 0] = 1.0
    direction = lin / spacing[None, :]
    if ndim == 2:
        return tuple(org[:2]), tuple(spacing[:2]), tuple(direction[:2, :2].ravel())
    return tuple(org), tuple(spacing), tuple(direction.ravel())


# -- writing --------------------------------------------------------------------------------
def _label_dtype(labels: np.ndarray) -> np.dtype:
    if labels.size and (labels.min() < 0 or labels.max() > np.iinfo(np.uint16).max):
        raise DataError(f"label values {labels.min()}..{labels.max()} do not fit a label map")
    return np.dtype(np.uint8 if labels.size == 0 or labels.max() < 256 else np.uint16)


def save_labels(labels: np.ndarray, affine: np.ndarray | None, path: str | Path) -> Path:
    """Write a label map in file index order ``(i, j[, k])`` with ``affine``'s geometry.

    The format follows ``path``'s ending: NIfTI through nibabel (the affine is stored
    exactly in qform and sform), NRRD / MetaImage through SimpleITK (compressed; origin,
    spacing and direction from the affine). Values are stored as uint8 (uint16 beyond 255).
    """
    p = Path(path)
    arr = np.asarray(labels)
    if arr.dtype.kind not in "biu":
        raise DataError(f"{p}: a label map needs integer values, got dtype {arr.dtype}")
    arr = arr.astype(_label_dtype(arr))
    end = file_ending(p)
    if end in NIFTI_ENDINGS:
        io.save_nifti(arr, affine, p)
        return p
    if end not in ITK_ENDINGS:
        raise DataError(
            f"{p}: cannot write a label map with this ending; use .nii.gz, .nii, .nrrd or .mha"
        )
    if arr.ndim not in (2, 3):
        raise DataError(f"{p}: a label map must be 2-D or 3-D, got shape {arr.shape}")
    sitk = _sitk()
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr.T))  # (i, j, k) -> ITK's (z, y, x)
    aff = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    origin, spacing, direction = affine_to_geometry(aff, arr.ndim)
    img.SetOrigin(origin)
    img.SetSpacing(spacing)
    img.SetDirection(direction)
    p.parent.mkdir(parents=True, exist_ok=True)
    try:
        with io.atomic_path(p) as tmp:
            sitk.WriteImage(img, str(tmp), useCompression=True)
    except RuntimeError as exc:
        raise DataError(f"{p}: cannot write the label map ({str(exc).splitlines()[0]})") from exc
    return p


def save_case_nifti(
    array: np.ndarray,
    affine: np.ndarray | None,
    path: str | Path,
    axes: tuple[int, int, int] | None = None,
) -> Path:
    """The project's one label-map writer: a ``(D, H, W)`` array (a prediction) of a
    :class:`~unetzoo.data.base.Case` or of an input read by
    :func:`~unetzoo.data.geometry.volume_to_cdhw`, on the input's grid.

    ``affine`` maps the ``(d, h, w)`` indices of ``array`` to world mm (``Case.affine``).
    With ``axes`` (``Case.axes``: the file axis each of ``D, H, W`` came from) the array
    is put back in the source file's voxel order and the affine un-permuted, so the file
    has the input's shape, voxel order and affine (nnU-Net's evaluator compares shapes;
    any viewer overlays it on the image); without ``axes`` the array is written as is
    (sources with no file grid, e.g. Synapse h5). The format follows ``path``'s ending
    (NIfTI, NRRD, MetaImage: :func:`save_labels`); values are stored as uint8 (uint16
    beyond 255).
    """
    arr = np.asarray(array)
    aff = None if affine is None else np.asarray(affine, dtype=np.float64)
    if axes is not None:
        arr, aff = array_to_file(arr, aff, axes)
    return save_labels(arr, aff, path)


# -- cases ----------------------------------------------------------------------------------
def _is_dicom_dir(folder: Path) -> bool:
    """A folder of ``.dcm`` files, or of files without any ending (as scanners write)."""
    kids = [c for c in folder.iterdir() if c.is_file() and not c.name.startswith(".")]
    if not kids:
        return False
    return any(c.name.lower().endswith(DICOM_ENDINGS) for c in kids) or all(
        "." not in c.name for c in kids
    )


def expand_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """Files and folders -> input files and DICOM series, sorted within each folder.

    A folder that is itself a DICOM series is one input; any other folder contributes its
    image files (hidden files and unknown endings skipped) and its DICOM-series
    sub-folders.
    """
    out: list[Path] = []
    for raw in inputs:
        p = Path(raw)
        if not p.exists():
            raise DataError(f"input {p} does not exist")
        if p.is_file():
            out.append(p)
            continue
        if not p.is_dir():  # a FIFO or a device (/dev/zero): refused by name
            io.require_file(p, "input image")
        if _is_dicom_dir(p):
            out.append(p)
            continue
        kids = sorted(c for c in p.iterdir() if not c.name.startswith("."))
        found = [
            c for c in kids
            if (c.is_file() and file_ending(c) not in ("", "dicom"))
            or (c.is_dir() and _is_dicom_dir(c))
        ]
        if not found:
            raise DataError(
                f"{p}: no image files in this folder (NIfTI, NRRD, MetaImage, DICOM, PNG, TIF)"
            )
        out.extend(found)
    if not out:
        raise DataError("no input files given; pass image files or folders")
    return out


def group_cases(inputs: Iterable[str | Path]) -> dict[str, list[Path]]:
    """``{case: [channel files]}`` in nnU-Net's naming: ``CASE_0000``, ``CASE_0001`` ... are
    channels 0, 1 ... of ``CASE``; any other name is a one-channel case of its own name.

    Channel numbers must run 0..n-1 without gaps, and one case id must not come from two
    kinds of names (``a.nii.gz`` and ``a_0000.nii.gz``): both are one-line DataErrors.
    """
    cases: dict[str, dict[int, Path]] = {}
    kinds: dict[str, bool] = {}  # case -> named with a _XXXX channel suffix
    for p in expand_inputs(inputs):
        stem = strip_ending(p) if p.is_file() else p.name
        m = _CHANNEL.match(stem)
        case, ch = (m["case"], int(m["channel"])) if m else (stem, 0)
        slot = cases.setdefault(case, {})
        if ch in slot or kinds.setdefault(case, m is not None) != (m is not None):
            raise DataError(
                f"{p}: case {case!r} channel {ch} is given twice; name channels "
                f"{case}_0000, {case}_0001, ... or give each case once"
            )
        slot[ch] = p
    out: dict[str, list[Path]] = {}
    for case, chans in cases.items():
        if sorted(chans) != list(range(len(chans))):
            raise DataError(
                f"case {case!r} has channels {sorted(chans)}; expected "
                f"{case}_0000 ... {case}_{len(chans) - 1:04d} without gaps"
            )
        out[case] = [chans[i] for i in range(len(chans))]
    return out


def load_case_channels(
    files: Sequence[Path],
) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """The channel files of one case stacked on a last axis: ``((i, j, k, C), affine,
    zooms)``, geometry of the first file; every channel must have the same shape."""
    arrays = []
    affine: np.ndarray | None = None
    zooms: tuple[float, ...] = ()
    for f in files:
        arr, aff, zm = load_medical_image(f)
        if arr.ndim == 4 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if affine is None:
            affine, zooms = aff, zm
        elif arr.shape != arrays[0].shape:
            raise DataError(
                f"{f}: shape {arr.shape} differs from {files[0].name}'s {arrays[0].shape}; "
                "the channels of one case must lie on one grid"
            )
        else:
            check_same_geometry(affine, aff, f, files[0],
                                "the channels of one case must be co-registered on one grid")
        arrays.append(arr)
    assert affine is not None
    if len(arrays) == 1:
        return arrays[0], affine, zooms
    return np.stack(arrays, axis=-1), affine, zooms
