"""Volume formats of the registry (:mod:`unetzoo.data.imageio`): NIfTI through nibabel,
NRRD / MetaImage and DICOM series through SimpleITK.

Every reader returns ``(array, affine, zooms)`` in one convention:

* ``array`` in file index order ``(i, j, k[, c])``. SimpleITK hands out ``(z, y, x)``
  (index order reversed) and vector pixels last; both are turned back to ``(x, y, z, c)``.
* ``affine``: 4x4 map from ``(i, j, k)`` indices to world millimetres in nibabel's
  **RAS+** convention. ITK's world is **LPS+** (DICOM's), so
  ``affine = diag(-1, -1, 1) @ [direction @ diag(spacing) | origin]``.
* ``zooms``: voxel size per file axis (``(sx, sy, sz)``), NaN where a NIfTI header does
  not know it.

Readers check nothing about sizes: the registry does that once, from :meth:`shape`
(the header alone), before :meth:`read` decodes anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unetzoo.data import io
from unetzoo.errors import DataError

# ITK's LPS+ world <-> nibabel's RAS+ world: flip the first two world axes.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
Read = tuple[np.ndarray, np.ndarray, tuple[float, ...]]


def _sitk():
    # Imported on first use: SimpleITK is slow to import and NIfTI-only runs never need it.
    import SimpleITK as sitk

    return sitk


class NiftiIO:
    """NIfTI-1/2 (``.nii``, ``.nii.gz``) through nibabel; the affine stored exactly."""

    endings = (".nii.gz", ".nii")
    what = "NIfTI file"

    @staticmethod
    def shape(path: Path) -> tuple[int, ...]:
        import nibabel as nib

        io.require_file(path, "NIfTI file", "check the dataset folder and dataset.json")
        with io.unreadable_as_data_error(path, "NIfTI file"):
            return tuple(int(n) for n in nib.load(str(path)).shape)

    @staticmethod
    def read(path: Path) -> Read:
        import nibabel as nib

        io.require_file(path, "NIfTI file", "check the dataset folder and dataset.json")
        with io.unreadable_as_data_error(path, "NIfTI file"):
            img = nib.load(str(path))
            arr = np.asarray(img.dataobj)
            affine = np.asarray(img.affine, dtype=np.float64)
            zooms = _unknown_zooms(img, path, tuple(float(z) for z in img.header.get_zooms()))
        return arr, affine, zooms

    @staticmethod
    def write(array: np.ndarray, affine: np.ndarray | None, path: Path) -> None:
        """``array`` (any axis order, any dtype) with ``affine`` (identity when None) in
        qform and sform."""
        import nibabel as nib

        aff = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
        img = nib.Nifti1Image(np.asarray(array), aff)
        img.header.set_qform(aff, code=1)
        img.header.set_sform(aff, code=1)
        nib.save(img, str(path))


def _unknown_zooms(img: Any, path: Path, zooms: tuple[float, ...]) -> tuple[float, ...]:
    """``zooms`` with NaN for the axes whose size a NIfTI header does not know: pixdim 0
    and neither qform nor sform (nibabel reads such axes as 1 mm, which would put voxel
    HD95s under "mm"). NaN spacing is "unknown" to the metrics (HD95 in voxels)."""
    header = img.header
    try:
        if int(header["qform_code"]) or int(header["sform_code"]):
            return zooms
        from nibabel.openers import ImageOpener

        with ImageOpener(str(path)) as fh:  # as written: nibabel's loader sets 0 to 1
            raw = type(header).from_fileobj(fh, check=False)
        pixdim = [float(p) for p in raw["pixdim"][1: 1 + len(zooms)]]
    except (KeyError, TypeError, ValueError, AttributeError):  # not a NIfTI-1/2 header
        return zooms
    return tuple(z if p > 0 else float("nan") for z, p in zip(zooms, pixdim))


def _itk_call(p: Path, call):
    sitk = _sitk()
    try:
        return call(sitk)
    except RuntimeError as exc:  # SimpleITK raises RuntimeError with a multi-line ITK dump
        first = str(exc).strip().splitlines()
        detail = next((ln.strip() for ln in first if "rror" in ln or "ould not" in ln), "")
        raise DataError(
            f"{p}: unreadable or truncated image ({detail or 'ITK could not read it'}); "
            "re-create or re-export it"
        ) from exc


def _info(sitk, f: Path) -> tuple[int, ...]:
    r = sitk.ImageFileReader()
    r.SetFileName(str(f))
    r.ReadImageInformation()
    comps = r.GetNumberOfComponents()
    return tuple(int(n) for n in r.GetSize()) + ((comps,) if comps > 1 else ())


def _from_itk(img) -> Read:
    sitk = _sitk()
    dim = img.GetDimension()
    arr = sitk.GetArrayFromImage(img)  # (z, y, x[, c]) -- index order reversed
    perm = list(range(dim))[::-1] + ([dim] if img.GetNumberOfComponentsPerPixel() > 1 else [])
    affine = geometry_to_affine(img.GetOrigin(), img.GetSpacing(), img.GetDirection())
    return np.transpose(arr, perm), affine, tuple(float(s) for s in img.GetSpacing())


class ItkIO:
    """NRRD (``.nrrd``, ``.nhdr``) and MetaImage (``.mha``, ``.mhd``) through SimpleITK;
    label maps are written compressed, geometry from the affine."""

    endings = (".nrrd", ".nhdr", ".mha", ".mhd")
    what = "image"

    @staticmethod
    def shape(path: Path) -> tuple[int, ...]:
        io.require_file(path, f"{path.suffix.lower()} image")
        return _itk_call(path, lambda sitk: _info(sitk, path))

    @staticmethod
    def read(path: Path) -> Read:
        io.require_file(path, f"{path.suffix.lower()} image")
        return _itk_call(path, lambda sitk: _from_itk(sitk.ReadImage(str(path))))

    @staticmethod
    def write(array: np.ndarray, affine: np.ndarray | None, path: Path) -> None:
        if array.ndim not in (2, 3):
            raise DataError(f"{path}: a label map must be 2-D or 3-D, got shape {array.shape}")
        sitk = _sitk()
        img = sitk.GetImageFromArray(np.ascontiguousarray(array.T))  # (i, j, k) -> (z, y, x)
        aff = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
        origin, spacing, direction = affine_to_geometry(aff, array.ndim)
        img.SetOrigin(origin)
        img.SetSpacing(spacing)
        img.SetDirection(direction)
        try:
            sitk.WriteImage(img, str(path), useCompression=True)
        except RuntimeError as exc:
            raise DataError(f"{path}: cannot write the label map "
                            f"({str(exc).splitlines()[0]})") from exc


class DicomIO:
    """A DICOM series: a folder of ``.dcm`` files (or of files without ending, as
    scanners write them), or one ``.dcm`` file of the series."""

    endings = (".dcm",)
    what = "DICOM series"

    @staticmethod
    def series_files(path: Path) -> list[str]:
        """The files of the one series at ``path``, in the order the slices are read."""
        folder = path if path.is_dir() else path.parent
        if not folder.is_dir():
            raise DataError(f"DICOM input not found: {path}")

        def files(sitk) -> list[str]:
            ids = list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
            if not ids:
                raise DataError(f"{folder}: no DICOM series found; give a folder of .dcm files")
            if path.is_file():  # the series this file belongs to
                one = sitk.ImageFileReader()
                one.SetFileName(str(path))
                one.ReadImageInformation()
                key = "0020|000e"
                sid = one.GetMetaData(key).strip() if one.HasMetaDataKey(key) else ""
                ids = [s for s in ids if s.strip() == sid] or ids[:1]
            if len(ids) > 1:
                raise DataError(
                    f"{folder}: holds {len(ids)} DICOM series ({', '.join(ids[:3])}"
                    f"{', ...' if len(ids) > 3 else ''}); put each series in its own folder"
                )
            return list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), ids[0]))

        return _itk_call(path, files)

    @classmethod
    def shape(cls, path: Path) -> tuple[int, ...]:
        """From the first file's header and the file count."""
        files = cls.series_files(path)
        first = _itk_call(path, lambda sitk: _info(sitk, Path(files[0])))
        return (*first[:2], len(files)) if len(files) > 1 else first

    @classmethod
    def read(cls, path: Path) -> Read:
        files = cls.series_files(path)

        def read(sitk):
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(files)
            return _from_itk(reader.Execute())

        return _itk_call(path, read)


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
