"""Image files in and label maps out: one registry of readers and writers chosen by file
ending (nnU-Net v2's ``reader_writer_registry`` is the model), one decoded type, sizes
checked once.

========================  ====================================  =========================
ending                    class                                 reads / writes
========================  ====================================  =========================
``.nii.gz`` ``.nii``      :class:`~.volumes.NiftiIO`            volumes / label maps
``.nrrd`` ``.nhdr``       :class:`~.volumes.ItkIO`              volumes / label maps
``.mha`` ``.mhd``         (SimpleITK)                           (``.nhdr``/``.mhd`` read only)
``.dcm``, a folder        :class:`~.volumes.DicomIO`            DICOM series / --
``.png`` ``.jpg`` ...     :class:`~.pictures.PictureIO`         pictures / label maps
``.seg.dcm``              :class:`~.dicom_seg.DicomSegIO`       -- / DICOM SEG of a series
========================  ====================================  =========================

Reading is two steps, the same for ``predict``, ``test``'s inputs and the demo's uploads:
:func:`read_header` checks a file's size from its header alone (:func:`check_size`, the
one place every size rule lives: the voxel cap, the longest axis, the largest slice, the
demo's slice count), then :func:`decode` reads a file, or the channel files of one case,
into a :class:`Decoded` ``(C, D, H, W)`` array in the file's dtype (volumes sliced by the
one rule, :func:`unetzoo.data.geometry.volume_to_cdhw`) without checking the size
again. Dataset readers use :func:`read_file` and :func:`load_image` (header check, then
the array). Label maps are written by :func:`write_labels` (a decoded input's grid) or
:func:`save_labels` (file order), in the format the target's ending names.
"""

from __future__ import annotations

import contextvars
import math
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from unetzoo.data import io
from unetzoo.data.geometry import array_to_file, check_same_geometry, volume_to_cdhw
from unetzoo.data.imageio.dicom_seg import DicomSegIO
from unetzoo.data.imageio.pictures import PictureIO
from unetzoo.data.imageio.volumes import DicomIO, ItkIO, NiftiIO
from unetzoo.errors import DataError

#: The readers, looked up by ending in this order (nnU-Net's ``LIST_OF_IO_CLASSES``).
READERS: tuple[type, ...] = (NiftiIO, ItkIO, DicomIO, PictureIO)
#: The label-map writers by the ending of the target.
WRITERS: dict[str, type] = {
    **{e: NiftiIO for e in NiftiIO.endings}, ".nrrd": ItkIO, ".mha": ItkIO,
    ".png": PictureIO, ".tif": PictureIO, ".tiff": PictureIO, **{e: DicomSegIO for e in DicomSegIO.endings},
}
VOLUME_ENDINGS = NiftiIO.endings + ItkIO.endings
PICTURE_ENDINGS = PictureIO.endings
#: Every ending a reader knows, longest first (``.nii.gz`` before ``.nii``).
ENDINGS = tuple(sorted({e for r in READERS for e in r.endings}, key=len, reverse=True))
DICOM = "dicom"  # the ending of a DICOM series (a folder or one of its files)
_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


# -- the ending vocabulary ------------------------------------------------------------------
def file_ending(path: str | Path) -> str:
    """The format ending of ``path`` (``".nii.gz"``, ``".nrrd"``, ``".png"`` ...),
    ``"dicom"`` for a DICOM file or folder, ``""`` when no reader knows it."""
    p = Path(path)
    name = p.name.lower()
    end = next((e for e in ENDINGS if name.endswith(e)), "")
    if end in DicomIO.endings or (not end and p.is_dir()):
        return DICOM
    return end


def strip_ending(path: str | Path) -> str:
    """File name without its format ending (``a_0000.nii.gz`` -> ``a_0000``)."""
    name = Path(path).name
    end = next((e for e in ENDINGS if name.lower().endswith(e)), "")
    return name[: len(name) - len(end)]


def reader_for(path: str | Path) -> type:
    """The reader class of ``path`` (by ending; a folder is a DICOM series)."""
    end = file_ending(path)
    if end == DICOM:
        return DicomIO
    for cls in READERS:
        if end and end in cls.endings:
            return cls
    raise DataError(
        f"{path}: unsupported input type; give NIfTI (.nii, .nii.gz), NRRD (.nrrd), "
        f"MetaImage (.mha, .mhd), a DICOM series folder, or 2-D pictures "
        f"({', '.join(PICTURE_ENDINGS)})"
    )


def output_ending(path: str | Path, fmt: str = "auto") -> str:
    """The ending of the label map of input ``path``: a picture's class map is
    ``_seg.png`` / ``_seg.tif``; a volume keeps its format (``.nhdr``/``.mhd`` as their
    one-file forms ``.nrrd``/``.mha``); a DICOM series gives ``.nii.gz`` (nnU-Net's
    convention) or, with ``fmt="dicom-seg"``, a DICOM SEG ``.seg.dcm``."""
    end = file_ending(path)
    if fmt == "dicom-seg":
        if end != DICOM:
            raise DataError(f"{path}: --format dicom-seg needs a DICOM series as input; "
                            "use --format auto for NIfTI, NRRD, MetaImage and pictures")
        return DicomSegIO.endings[0]
    if end in PICTURE_ENDINGS:
        return "_seg.tif" if end in (".tif", ".tiff") else "_seg.png"
    if end in (".nii.gz", ".nii", ".nrrd", ".mha"):
        return end
    return {".nhdr": ".nrrd", ".mhd": ".mha"}.get(end, ".nii.gz")


# -- sizes ----------------------------------------------------------------------------------
#: Voxels any reader decodes at most, checked from the file header before anything is
#: decompressed: 2**28 (a 512 x 512 x 1024 CT, 1 GiB as float32). A 7 MB .nii.gz that
#: inflates to 8 GiB, or a sparse 16 GiB .nii, is refused in one line instead.
DEFAULT_MAX_VOXELS = 2**28
#: The longest axis a volume may have: a NIfTI-2 of 1,000,000 slices of 8 x 8 is few
#: voxels but a million model runs (~49 CPU-minutes).
MAX_AXIS = 16_384
#: Largest 2-D image (or volume slice) ``predict`` takes, in pixels: 4096 x 4096. An
#: 8000 x 8000 PNG ran 8.5 minutes to a 12 GB peak on CPU (issue 13).
DEFAULT_MAX_PIXELS = 4096 * 4096
_MAX_VOXELS: contextvars.ContextVar[int | None] = contextvars.ContextVar("max_voxels",
                                                                         default=None)


def max_voxels() -> int:
    """The voxel cap in force: ``--max-voxels`` (:func:`voxel_limit`), else the
    ``UNETZOO_MAX_VOXELS`` environment variable, else :data:`DEFAULT_MAX_VOXELS`."""
    value = _MAX_VOXELS.get()
    if value is None:
        env = os.environ.get("UNETZOO_MAX_VOXELS", "")
        value = int(env) if env.isdigit() and int(env) > 0 else DEFAULT_MAX_VOXELS
    return value


@contextmanager
def voxel_limit(limit: int | None) -> Iterator[None]:
    """Every reader inside the block caps files at ``limit`` voxels (None: unchanged)."""
    token = _MAX_VOXELS.set(limit) if limit is not None else None
    try:
        yield
    finally:
        if token is not None:
            _MAX_VOXELS.reset(token)


@dataclass(frozen=True)
class Limits:
    """Size rules of one caller, checked once from the header (:func:`check_size`).

    Attributes:
        max_pixels: largest 2-D image or volume slice (the two largest axes of a
            volume, whose slicing axis is not known yet); None: no such rule.
        max_voxels: all voxels (channels included); None: :func:`max_voxels`.
        max_axis: the longest of the first three axes.
        max_slices: the demo's rule: the shortest axis of a volume (each slice is a
            model run); None: no such rule.
        owner: whose limit a message names (``"predict"``, ``"the demo"``).
    """

    max_pixels: int | None = DEFAULT_MAX_PIXELS
    max_voxels: int | None = None
    max_axis: int = MAX_AXIS
    max_slices: int | None = None
    owner: str = "predict"


DATASET_LIMITS = Limits(max_pixels=None)  # dataset readers: the voxel and axis caps only


def check_size(shape: Sequence[int], where: str | Path, limits: Limits = DATASET_LIMITS) -> None:
    """One line when a header's ``shape`` breaks a rule of ``limits``: too many voxels,
    an axis too long, an empty axis, a slice over ``max_pixels``, too many slices."""
    dims = [int(n) for n in shape]
    total, cap = math.prod(dims), limits.max_voxels or max_voxels()
    if total > cap:
        raise DataError(
            f"{where}: {total:,} voxels (shape {tuple(dims)}) are over the limit of "
            f"{cap:,}, too large; crop or downsample it, or raise --max-voxels "
            "(UNETZOO_MAX_VOXELS) if the machine has the memory"
        )
    space = dims[:3]
    if space and max(space) > limits.max_axis:
        raise DataError(f"{where}: an axis of {max(space):,} voxels (shape {tuple(dims)}) is "
                        f"over {limits.owner}'s limit of {limits.max_axis:,} per axis; crop or "
                        "resample it")
    volume = len(space) > 2
    if limits.max_pixels is None:
        return
    if any(n == 0 for n in space):
        raise DataError(f"{where}: the {'volume' if volume else 'image'} has an empty axis "
                        f"(shape {tuple(dims)}); nothing to segment")
    if limits.max_slices is not None and volume and min(space) > limits.max_slices:
        raise DataError(f"{where}: {min(space):,} slices along every axis, over "
                        f"{limits.owner}'s limit of {limits.max_slices}; crop the volume")
    h, w = sorted(space, reverse=True)[:2] if volume else space[:2]
    if h * w > limits.max_pixels:
        side = int(math.isqrt(limits.max_pixels))
        raise DataError(
            f"{where}: {'a slice of ' if volume else ''}{w} x {h} pixels is over "
            f"{limits.owner}'s limit of {limits.max_pixels:,} pixels (about {side} x {side}); "
            "crop or downsample it, or raise --max-pixels if the machine has the memory and time"
        )


def read_header(path: str | Path, limits: Limits = DATASET_LIMITS) -> tuple[int, ...]:
    """The shape of ``path`` from its header alone (nothing decoded), checked against
    ``limits``: ``(H, W)`` for a picture, ``(i, j[, k][, c])`` for a volume (NIfTI's
    vector layout ``(X, Y, Z, 1, C)`` read as ``(X, Y, Z, C)``)."""
    p = Path(path)
    shape = reader_for(p).shape(p)
    if len(shape) == 5 and shape[3] == 1:
        shape = (*shape[:3], shape[4])
    if limits.max_pixels is not None and not 2 <= len(shape) <= 4:
        raise DataError(f"{p}: expected a 2-D or 3-D image (channels last), got shape {shape}")
    check_size(shape, p, limits)
    return shape


def read_file(path: str | Path) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """``(array, affine, zooms)`` of a volume file or DICOM series in file order (the
    readers' convention, :mod:`unetzoo.data.imageio.volumes`); the header checked
    first (:data:`DATASET_LIMITS`)."""
    p = Path(path)
    reader = reader_for(p)
    if reader is PictureIO:
        raise DataError(f"{p}: a 2-D picture where a volume is expected; give NIfTI, NRRD, "
                        "MetaImage or a DICOM series")
    check_size(reader.shape(p), p)
    return reader.read(p)


def load_image(path: Path, *, mode: str | None = None) -> np.ndarray:
    """Pixels of a dataset's picture or mask, ``(H, W)`` or ``(H, W, C)``, the header
    checked first (:meth:`~unetzoo.data.imageio.pictures.PictureIO.read_raw`)."""
    check_size(PictureIO.shape(Path(path)), path)
    return PictureIO.read_raw(Path(path), mode)


# -- the decoded type -----------------------------------------------------------------------
@dataclass
class Decoded:
    """A file (or the channel files of one case) read: the one decoded-image type of
    ``predict``, ``test``'s inputs and the demo's uploads (:func:`decode`).

    Attributes:
        array: ``(C, D, H, W)`` in the file's dtype (``D = 1`` for a 2-D picture), so a
            picture's bit depth is still known; a caller may swap it for the model's
            normalised input (``dataclasses.replace``), the grid stays.
        spacing: voxel size along ``(D, H, W)`` in mm (1.0 where the format has none).
        affine: a volume's file affine (4x4, file ``(i, j, k)`` indices); None for pictures.
        order: a volume's file axis of each of ``D, H, W``; None for pictures.
        file_ndim: spatial axes in the file (2 for a picture or a single-slice file).
        where: how errors name the input (a path, ``case NAME`` or an upload's name).
        geometry_known: False when the header gives no voxel size (nor, then, an
            orientation).
        ending: the format it was read as (:func:`file_ending`: ``".png"``, ``"dicom"``).
        source: the files read (a DICOM series: its slice files in slice order), which
            a DICOM SEG references.
    """

    array: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    affine: np.ndarray | None = None
    order: tuple[int, int, int] | None = None
    file_ndim: int = 2
    where: str = "input"
    geometry_known: bool = True
    ending: str = ".png"
    source: tuple[str, ...] = field(default=())

    @property
    def picture(self) -> bool:
        return self.order is None

    @property
    def bit_depth(self) -> int | None:
        """255 / 65535 (1 for bool) for 8/16-bit pictures (display renderings), else None."""
        from unetzoo.data.preprocessing import display_bit_depth

        return display_bit_depth(self.array) if self.picture else None

    @property
    def grid_spacing(self) -> tuple[float, ...] | None:
        """Voxel size (mm) along ``D, H, W`` from the affine's columns (what a plan
        resamples from); None for pictures."""
        if self.order is None or self.affine is None:
            return None
        zooms = np.linalg.norm(np.asarray(self.affine, dtype=np.float64)[:3, :3], axis=0)
        return tuple(float(zooms[a]) for a in self.order)


def _check_intensities(arr: np.ndarray, where: str) -> None:
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_) or np.iscomplexobj(arr):
        raise DataError(f"{where}: voxels of type {arr.dtype} are not intensities; save real numbers")
    bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
    if bad:  # a single NaN voxel used to wipe its slice; masking would invent tissue
        raise DataError(
            f"{where}: {bad} voxel(s) hold NaN or Inf; fix or mask them (e.g. set them to "
            "the background intensity) before predicting"
        )


def _decode_picture(p: Path, where: str) -> Decoded:
    raw = PictureIO.read(p)[0]
    _check_intensities(raw, where)
    if raw.ndim == 2:
        raw = raw[..., None]
    if raw.ndim != 3:
        raise DataError(f"{where}: expected a 2-D image, got array shape {raw.shape}")
    return Decoded(np.moveaxis(raw, -1, 0)[:, None], where=where,
                   ending=file_ending(p), source=(str(p),))


def _read_channels(files: Sequence[Path]) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """The channel files of one case stacked on a last axis, geometry of the first file;
    every channel must lie on one grid."""
    arrays: list[np.ndarray] = []
    affine, zooms = np.eye(4), ()
    for n, f in enumerate(files):
        arr, aff, zm = reader_for(f).read(f)
        if arr.ndim == 4 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if n == 0:
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
    return (arrays[0] if len(arrays) == 1 else np.stack(arrays, axis=-1)), affine, zooms


def _decode_volume(files: Sequence[Path], axes: tuple[int, int, int] | None,
                   where: str) -> Decoded:
    arr, affine, zooms = _read_channels(files)
    if arr.ndim == 5 and arr.shape[3] == 1:  # (X, Y, Z, 1, C): NIfTI's vector-valued layout
        arr = arr[:, :, :, 0]
    multi = len(files) > 1 or arr.ndim == 4
    spatial = arr.shape[:-1] if multi else arr.shape
    if len(spatial) not in (2, 3):
        raise DataError(
            f"{where}: expected a 2-D or 3-D image per channel file, got shape {arr.shape}"
        )
    if len(spatial) == 2:
        arr = arr[:, :, None] if not multi else arr[:, :, None, :]
        zooms = (*zooms[:2], 1.0)
    _check_intensities(arr, where)
    vol, order, spacing = volume_to_cdhw(arr, affine, zooms, axes)  # the one slicing rule
    # unknown sizes (a NIfTI with pixdim 0, no qform/sform) keep Decoded's 1.0 placeholder
    known = all(s > 0 for s in spacing)
    spacing = tuple(s if s > 0 else 1.0 for s in spacing)
    end = file_ending(files[0])
    source = DicomIO.series_files(files[0]) if end == DICOM else [str(f) for f in files]
    return Decoded(vol, spacing, affine, order, len(spatial), where, known, end, tuple(source))


def decode(
    files: str | Path | Sequence[str | Path],
    axes: tuple[int, int, int] | None = None,
    where: str | None = None,
) -> Decoded:
    """Read one input whose header was checked (:func:`read_header`): a 2-D picture,
    or a volume (NIfTI, NRRD, MetaImage, DICOM) given as one file or as the channel
    files of one case in channel order.

    Args:
        files: the file, or the channel files of one case in channel order.
        axes: slice a volume along these file axes (a mask read in its image's order);
            default the one slicing rule.
        where: how errors name the input (default the file, or the files' names).

    Raises:
        DataError: unreadable, NaN/Inf or non-numeric voxels, channels off one grid.
    """
    paths = [Path(files)] if isinstance(files, (str, Path)) else [Path(f) for f in files]
    if where is None:
        where = str(paths[0]) if len(paths) == 1 else ", ".join(p.name for p in paths)
    if file_ending(paths[0]) in PICTURE_ENDINGS:
        return _decode_picture(paths[0], where)
    return _decode_volume(paths, axes, where)


# -- writing --------------------------------------------------------------------------------
def _label_dtype(labels: np.ndarray, path: Path) -> np.dtype:
    if labels.dtype.kind not in "biu":
        raise DataError(f"{path}: a label map needs integer values, got dtype {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() > np.iinfo(np.uint16).max):
        raise DataError(f"label values {labels.min()}..{labels.max()} do not fit a label map")
    return np.dtype(np.uint8 if labels.size == 0 or labels.max() < 256 else np.uint16)


def writer_for(path: str | Path) -> type:
    """The writer class for a label map at ``path``, by its ending."""
    name = Path(path).name.lower()
    end = next((e for e in sorted(WRITERS, key=len, reverse=True) if name.endswith(e)), "")
    if not end:
        raise DataError(f"{path}: cannot write a label map with this ending; use .nii.gz, "
                        ".nii, .nrrd, .mha, .png, .tif or .seg.dcm")
    return WRITERS[end]


def save_labels(labels: np.ndarray, affine: np.ndarray | None, path: str | Path, *,
                source: Sequence[str] = (), class_names: Sequence[str] = ()) -> Path:
    """Write a label map in file order (``(i, j[, k])``; a picture's ``(H, W)``) in the
    format ``path``'s ending names (:func:`writer_for`), stored as uint8 (uint16 beyond
    255), through a temporary file renamed onto ``path`` (:func:`unetzoo.data.io.atomic_path`).

    NIfTI stores ``affine`` exactly (qform and sform); NRRD / MetaImage its origin,
    spacing and direction; a DICOM SEG references the series ``source`` (its slice files
    in slice order) and names its segments after ``class_names``.
    """
    p = Path(path)
    writer = writer_for(p)
    arr = np.asarray(labels)
    arr = arr.astype(_label_dtype(arr, p))
    p.parent.mkdir(parents=True, exist_ok=True)
    with io.atomic_path(p) as tmp:
        try:
            if writer is DicomSegIO:
                writer.write_seg(arr, source, class_names, tmp)
            else:
                writer.write(arr, affine, tmp)
        except DataError as exc:  # name the target, not its temporary twin
            raise DataError(str(exc).replace(str(tmp), str(p))) from None
    return p


def write_labels(labels: np.ndarray, image: Decoded, path: str | Path,
                 class_names: Sequence[str] = ()) -> Path:
    """Write ``labels`` ``(D, H, W)`` (a prediction of ``image``) on ``image``'s grid:
    the input's shape, voxel order and affine (a picture: its ``(H, W)``), so any viewer
    overlays it on the input and nnU-Net's evaluator compares it; format by ``path``'s
    ending (:func:`save_labels`)."""
    if image.picture:
        return save_labels(labels[0], None, path)
    assert image.order is not None
    file_labels = array_to_file(labels, None, image.order)[0]  # back to the file's (i, j, k)
    if image.file_ndim == 2:
        file_labels = file_labels[:, :, 0]
    return save_labels(file_labels, image.affine, path, source=image.source,
                       class_names=class_names)


def save_case_labels(array: np.ndarray, affine: np.ndarray | None, path: str | Path,
                     axes: tuple[int, int, int] | None = None) -> Path:
    """Write a ``(D, H, W)`` prediction of a :class:`~unetzoo.data.base.Case` on its
    source file's grid: ``affine`` maps its ``(d, h, w)`` indices (``Case.affine``),
    ``axes`` (``Case.axes``) puts it back in the file's voxel order; without ``axes``
    the array is written as is (sources with no file grid, e.g. Synapse h5)."""
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
    return any(c.name.lower().endswith(DicomIO.endings) for c in kids) or all(
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
        found = [c for c in kids if (c.is_file() and file_ending(c) not in ("", DICOM))
                 or (c.is_dir() and _is_dicom_dir(c))]
        if not found:
            raise DataError(
                f"{p}: no image files in this folder (NIfTI, NRRD, MetaImage, DICOM, PNG, TIF)"
            )
        out.extend(found)
    if not out:
        raise DataError("no input files given; pass image files or folders")
    return out


def group_cases(files: Iterable[str | Path]) -> dict[str, list[Path]]:
    """``{case: [channel files]}`` in nnU-Net's naming: ``CASE_0000``, ``CASE_0001`` ... are
    channels 0, 1 ... of ``CASE``; any other name is a one-channel case of its own name.

    Channel numbers must run 0..n-1 without gaps, and one case id must not come from two
    kinds of names (``a.nii.gz`` and ``a_0000.nii.gz``): both are one-line DataErrors.
    """
    cases: dict[str, dict[int, Path]] = {}
    kinds: dict[str, bool] = {}  # case -> named with a _XXXX channel suffix
    for p in map(Path, files):
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


def save_image(array: np.ndarray, affine: np.ndarray | None, path: str | Path) -> Path:
    """Write an image volume (any dtype; file order ``(i, j, k)``) with ``affine`` in the
    format ``path``'s ending names, atomically: the dataset builders' writer."""
    p = Path(path)
    writer = writer_for(p)
    if writer not in (NiftiIO, ItkIO):
        raise DataError(f"{p}: image volumes are written as NIfTI, NRRD or MetaImage")
    p.parent.mkdir(parents=True, exist_ok=True)
    with io.atomic_path(p) as tmp:
        writer.write(np.asarray(array), affine, tmp)
    return p
