"""File readers that turn low-level failures into one-line :class:`DataError` messages
naming the file and the fix."""

from __future__ import annotations

import contextvars
import json
import math
import os
import stat
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np

from unetzoo.errors import DataError


def special_file(path: str | Path) -> str | None:
    """``"a FIFO (named pipe)"``, ``"a socket"`` or ``"a device"`` when ``path`` (links
    followed) is one of those, else None: reading ``/dev/zero`` or a FIFO never ends, so
    every reader refuses them by name before opening them."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    return ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a socket"
            if stat.S_ISSOCK(mode) else "a device")


def require_file(path: Path, what: str, fix: str = "") -> Path:
    """Return ``path`` if it is a regular file (links followed), else raise ``DataError``
    naming it; a device or a FIFO is refused by name (:func:`special_file`)."""
    kind = special_file(path)
    if kind is not None:
        raise DataError(f"{path} is {kind}, not a file; give a regular {what}")
    if not path.is_file():
        raise DataError(f"missing {what}: {path}" + (f"; {fix}" if fix else ""))
    return path


#: Voxels any reader decodes at most, checked from the file header before anything is
#: decompressed: 2**28 (a 512 x 512 x 1024 CT, 1 GiB as float32). A 7 MB .nii.gz that
#: inflates to 8 GiB, or a sparse 16 GiB .nii, is refused in one line instead.
DEFAULT_MAX_VOXELS = 2**28
#: The longest axis a volume may have: a NIfTI-2 of 1,000,000 slices of 8 x 8 is few
#: voxels but a million model runs (~49 CPU-minutes).
MAX_AXIS = 16_384
#: Pages a TIFF may have (a 20,000-page file ran for minutes).
MAX_TIFF_PAGES = 1024
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


def check_voxels(shape: Sequence[int], where: Path | str) -> None:
    """One line when a header's ``shape`` is over the voxel cap or :data:`MAX_AXIS`."""
    dims = [int(n) for n in shape]
    total, limit = math.prod(dims), max_voxels()
    if total > limit:
        raise DataError(
            f"{where}: {total:,} voxels (shape {tuple(dims)}) are over the limit of "
            f"{limit:,}; crop or downsample it, or raise --max-voxels (UNETZOO_MAX_VOXELS) "
            "if the machine has the memory"
        )
    if dims and max(dims[:3]) > MAX_AXIS:
        raise DataError(f"{where}: an axis of {max(dims[:3]):,} voxels (shape {tuple(dims)}) "
                        f"is over the limit of {MAX_AXIS:,} per axis; crop or resample it")


@contextmanager
def unreadable_as_data_error(path: Path, what: str) -> Iterator[None]:
    """Turn whatever a decoder raises inside the block into one :class:`DataError`
    line naming ``path`` (``what``: "npz file", "NIfTI file", "image", ...)."""
    try:
        yield
    except DataError:
        raise
    except Exception as exc:  # zipfile.BadZipFile, ValueError, EOFError, OSError ...
        detail = " ".join(str(exc).split())  # decoders' messages may span lines: keep one
        raise DataError(
            f"{path}: unreadable or truncated {what} ({type(exc).__name__}: {detail}); "
            "re-create or re-download it"
        ) from exc


def read_list(path: Path) -> list[str]:
    """Non-empty, stripped lines of a split list file."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise DataError(f"cannot read list file {path}: {exc.strerror or exc}") from exc
    return [ln.strip() for ln in lines if ln.strip()]


def load_npz(path: Path, keys: Sequence[str]) -> dict[str, np.ndarray]:
    """Arrays ``keys`` of an ``.npz`` file (unreadable file or missing key -> DataError)."""
    require_file(path, "npz file", "check the list file and the data folder")
    with unreadable_as_data_error(path, "npz file"), np.load(path, allow_pickle=False) as data:
        missing = [k for k in keys if k not in data.files]
        if missing:
            raise DataError(
                f"{path}: missing key(s) {missing} (file has {data.files}); "
                f"expected keys {list(keys)}"
            )
        return {k: np.asarray(data[k]) for k in keys}


def open_h5(path: Path):
    """Open an HDF5 file read-only (unreadable -> DataError)."""
    import h5py

    require_file(path, "HDF5 volume", "check the list file and the data folder")
    try:
        return h5py.File(path, "r")
    except Exception as exc:
        raise DataError(
            f"{path}: unreadable or truncated HDF5 file ({exc}); re-create or re-download it"
        ) from exc


def h5_dataset(handle: Any, key: str, path: Path):
    """``handle[key]`` or a DataError naming the file and the keys it has."""
    if key not in handle:
        raise DataError(
            f"{path}: missing key {key!r} (file has {sorted(handle.keys())})"
        )
    return handle[key]


def load_h5(path: Path, keys: Sequence[str]) -> dict[str, np.ndarray]:
    """Whole arrays ``keys`` of an HDF5 file."""
    with open_h5(path) as f:
        try:
            return {k: np.asarray(h5_dataset(f, k, path)[()]) for k in keys}
        except DataError:
            raise
        except Exception as exc:
            raise DataError(f"{path}: cannot read data ({exc}); the file may be truncated") from exc


def load_nifti(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """``(array, affine, zooms)`` of a NIfTI file, array in file (x, y, z[, c]) order."""
    import nibabel as nib

    require_file(path, "NIfTI file", "check the dataset folder and dataset.json")
    with unreadable_as_data_error(path, "NIfTI file"):
        img = nib.load(str(path))
        check_voxels(img.shape, path)  # from the header, before decompressing
        arr = np.asarray(img.dataobj)
        affine = np.asarray(img.affine, dtype=np.float64)
        zooms = unknown_zooms(img, path, tuple(float(z) for z in img.header.get_zooms()))
    return arr, affine, zooms


def unknown_zooms(img: Any, path: Path, zooms: tuple[float, ...]) -> tuple[float, ...]:
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


def nifti_shape(path: Path) -> tuple[int, ...]:
    """The data shape of a NIfTI file from its header (nothing decompressed)."""
    import nibabel as nib

    require_file(path, "NIfTI file")
    with unreadable_as_data_error(path, "NIfTI file"):
        return tuple(int(n) for n in nib.load(str(path)).shape)


def save_nifti(array: np.ndarray, affine: np.ndarray | None, path: str | Path) -> None:
    """Write ``array`` (any axis order) with ``affine`` (identity when None)."""
    import nibabel as nib

    aff = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    img = nib.Nifti1Image(np.asarray(array), aff)
    img.header.set_qform(aff, code=1)
    img.header.set_sform(aff, code=1)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))


#: ITU-R BT.601 luma weights (R, G, B): the one RGB -> grey rule of ``predict`` and the demo.
RGB_TO_GREY = (0.299, 0.587, 0.114)


def load_image(path: Path, *, mode: str | None = None) -> np.ndarray:
    """Pixel array of a png/jpg/bmp/gif/tif file: ``(H, W)`` or ``(H, W, C)``.

    ``mode`` converts with PIL (``"L"``, ``"RGB"``); ``"P"`` palette images are returned
    as their palette indices (class indices of palette masks).
    """
    require_file(path, "image file")
    suffix = path.suffix.lower()
    with unreadable_as_data_error(path, "image"):
        if suffix in (".tif", ".tiff") and mode is None:
            import tifffile

            with tifffile.TiffFile(str(path)) as tif:
                _check_tiff(tif, path)
                _one_page(tif, path)
                arr = np.asarray(tif.series[0].asarray())
            if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
                arr = np.moveaxis(arr, 0, -1)  # planar (C, H, W) tif
            return arr
        from PIL import Image

        with Image.open(path) as im:
            im = _upright(im)
            if mode is not None and im.mode != mode:
                im = im.convert(mode)
            return np.asarray(im)


_EXIF_ORIENTATION = 0x0112


def _upright(im: Any) -> Any:
    """The picture as it is displayed: its EXIF orientation (a camera's or phone's
    rotation flag) applied, as every viewer does; pixels loaded."""
    from PIL import ImageOps

    im.load()
    if im.getexif().get(_EXIF_ORIENTATION, 1) in (1, None):
        return im
    return ImageOps.exif_transpose(im)


def _one_page(tif: Any, path: Path) -> None:
    """Refuse a multi-page TIFF (a stack, not a picture: its pages read as RGB)."""
    pages = len(tif.series[0].pages) if tif.series else 0
    if pages > 1:
        raise DataError(f"{path}: a TIFF stack of {pages} pages, not one 2-D image; save a "
                        "stack as a NIfTI volume, or each page as its own file")


def _check_tiff(tif: Any, path: Path) -> None:
    """Page and voxel caps of an open TIFF, before any page is decoded."""
    pages = tif.pages
    pages.useframes = False
    n = 0
    for _ in pages:  # stops at the cap: the page count of a hostile file is not trusted
        n += 1
        if n > MAX_TIFF_PAGES:
            raise DataError(f"{path}: more than {MAX_TIFF_PAGES} pages; give one image "
                            "per file (or a volume as NIfTI)")
    check_voxels(tif.series[0].shape, path)


def picture_shape(path: Path) -> tuple[int, ...]:
    """``(H, W)`` of a png/jpg/bmp/tif from its header only (nothing decoded)."""
    require_file(path, "image file")
    with unreadable_as_data_error(path, "image"):
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(str(path)) as tif:
                _check_tiff(tif, path)
                _one_page(tif, path)
                shape = tuple(int(n) for n in tif.series[0].shape)
            # (H, W), (H, W, C) or planar (C, H, W): the two largest axes are the plane.
            return tuple(sorted(shape, reverse=True)[:2]) if len(shape) > 2 else shape
        from PIL import Image

        with Image.open(path) as im:
            swap = im.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8)  # turned 90 degrees
            return (int(im.width), int(im.height)) if swap else (int(im.height), int(im.width))


def load_picture(path: Path) -> np.ndarray:
    """Pixels of a png/jpg/bmp/tif *image* (not a mask): ``(H, W)`` or ``(H, W, C)``.

    Palette images are expanded to their colours and alpha is dropped (the one picture
    reader: ``predict`` and the demo's uploads both come here); the dtype is kept (uint8 / uint16 / float) so the caller can tell
    a display rendering from raw intensities.
    """
    if path.suffix.lower() in (".tif", ".tiff"):
        arr = load_image(path)
        if arr.ndim == 3 and arr.shape[-1] in (2, 4):
            arr = arr[..., :-1]  # grey + alpha, RGB + alpha
        return arr
    require_file(path, "image file")
    with unreadable_as_data_error(path, "image"):
        from PIL import Image

        with Image.open(path) as im:
            im = _upright(im)
            if im.mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            if im.mode in ("LA", "RGBA", "PA"):
                im = im.convert(im.mode[:-1] if im.mode != "PA" else "RGB")
            if im.mode == "1":
                im = im.convert("L")
            return np.asarray(im)


def read_json(path: Path) -> dict[str, Any]:
    require_file(path, "JSON file")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc}); fix the file") from exc
    except RecursionError:  # "[[[[..." 100,000 deep
        raise DataError(f"{path}: JSON nested too deeply; fix the file") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object at the top level")
    return data


def _atomic_write(path: Path, mode: str, suffix: str, write: Callable[[IO], object]) -> None:
    """``write(handle)`` into a temp file beside ``path``, then rename: readers (and other
    workers) see the old file or the whole new one, never a half-written one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, mode) as fh:  # the one rule (atomic_path)
        write(fh)


def _ending(name: str) -> str:
    """A file name's format ending, kept by temporary names (writers pick the format from
    it: ``.nii.gz``, ``.npz``, ``.png``)."""
    if name.lower().endswith(".nii.gz"):
        return name[-7:]
    return os.path.splitext(name)[1]


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` (same folder, same ending) for a writer that takes
    a file name; on success it is renamed onto ``path``, on failure removed.

    The one rule every writer follows: a kill never leaves a truncated file under the
    final name, and the old file is replaced, never rewritten in place (a hard-linked
    backup of it, ``cp -al`` or ``rsync --link-dest``, keeps its content).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                               suffix=".tmp" + _ending(path.name))
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    """Write ``array`` to ``path`` (``.npy``) via a temp file + rename (safe for workers)."""
    _atomic_write(path, "wb", ".npy", lambda fh: np.save(fh, array))


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temp file + rename."""
    _atomic_write(path, "w", "", lambda fh: fh.write(text))


def cache_root() -> Path:
    """``$UNETZOO_CACHE`` or ``~/.cache/unetzoo``."""
    env = os.environ.get("UNETZOO_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "unetzoo"
