"""File readers that turn low-level failures into one-line :class:`DataError` messages
naming the file and the fix."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unetzoo.errors import DataError


def require_file(path: Path, what: str, fix: str = "") -> Path:
    """Return ``path`` if it is a file, else raise ``DataError`` naming it."""
    if not path.is_file():
        raise DataError(f"missing {what}: {path}" + (f"; {fix}" if fix else ""))
    return path


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
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in keys if k not in data.files]
            if missing:
                raise DataError(
                    f"{path}: missing key(s) {missing} (file has {data.files}); "
                    f"expected keys {list(keys)}"
                )
            return {k: np.asarray(data[k]) for k in keys}
    except DataError:
        raise
    except Exception as exc:  # zipfile.BadZipFile, ValueError, EOFError, OSError ...
        raise DataError(
            f"{path}: unreadable or truncated npz file ({type(exc).__name__}: {exc}); "
            "re-create or re-download it"
        ) from exc


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
    try:
        img = nib.load(str(path))
        arr = np.asarray(img.dataobj)
        affine = np.asarray(img.affine, dtype=np.float64)
        zooms = tuple(float(z) for z in img.header.get_zooms())
    except Exception as exc:
        raise DataError(
            f"{path}: unreadable or truncated NIfTI file ({type(exc).__name__}: {exc}); "
            "re-create or re-download it"
        ) from exc
    return arr, affine, zooms


def nifti_shape(path: Path) -> tuple[int, ...]:
    """The data shape of a NIfTI file from its header (nothing decompressed)."""
    import nibabel as nib

    require_file(path, "NIfTI file")
    try:
        return tuple(int(n) for n in nib.load(str(path)).shape)
    except Exception as exc:
        raise DataError(
            f"{path}: unreadable or truncated NIfTI file ({type(exc).__name__}: {exc}); "
            "re-create or re-download it"
        ) from exc


def save_nifti(array: np.ndarray, affine: np.ndarray | None, path: str | Path) -> None:
    """Write ``array`` (any axis order) with ``affine`` (identity when None)."""
    import nibabel as nib

    aff = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    img = nib.Nifti1Image(np.asarray(array), aff)
    img.header.set_qform(aff, code=1)
    img.header.set_sform(aff, code=1)
    nib.save(img, str(path))


def save_case_nifti(
    array: np.ndarray,
    affine: np.ndarray | None,
    path: str | Path,
    axes: tuple[int, int, int] | None = None,
) -> Path:
    """The project's one label-map writer: a ``(D, H, W)`` array (a prediction) of a
    :class:`Case` or of an input read by :func:`volume_to_cdhw`, on the input's grid.

    ``affine`` maps the ``(d, h, w)`` indices of ``array`` to world mm (``Case.affine``).
    With ``axes`` (``Case.axes``: the file axis each of ``D, H, W`` came from) the array
    is put back in the source file's voxel order and the affine un-permuted, so the file
    has the input's shape, voxel order and affine (nnU-Net's evaluator compares shapes;
    any viewer overlays it on the image); without ``axes`` the array is written as is
    (sources with no file grid, e.g. Synapse h5). The format follows ``path``'s ending
    (NIfTI, NRRD, MetaImage: :func:`unetzoo.data.medio.save_labels`); values are stored
    as uint8 (uint16 beyond 255).
    """
    from unetzoo.data.medio import save_labels

    arr = np.asarray(array)
    aff = None if affine is None else np.asarray(affine, dtype=np.float64)
    if axes is not None:
        inv = tuple(int(a) for a in np.argsort(axes))
        arr = np.transpose(arr, inv + tuple(range(3, arr.ndim)))
        if aff is not None:
            aff = aff.copy()
            aff[:, :3] = np.asarray(affine, dtype=np.float64)[:, list(inv)]
    return save_labels(arr, aff, path)


def volume_to_cdhw(
    array: np.ndarray,
    affine: np.ndarray,
    zooms: Sequence[float],
    axes: tuple[int, int, int] | None = None,
) -> tuple[np.ndarray, tuple[int, int, int], tuple[float, float, float]]:
    """The one slicing rule of ``predict`` and the demo: a file-order volume
    ``(i, j, k)`` or ``(i, j, k, C)`` -> ``(C, D, H, W)`` with ``D`` the slicing axis.

    The slicing axis is a single-slice axis when there is one, else the through-plane
    axis (largest spacing; :func:`unetzoo.data.nnunet.reorient`); ``axes`` forces an
    order (a mask read in the order of its image). Returns ``(volume, axes, spacing)``:
    the file axis of each of ``D, H, W`` (for :func:`save_case_nifti`) and the voxel
    size along them in mm.
    """
    from unetzoo.data.nnunet import reorient

    arr = np.asarray(array)
    if arr.ndim == 2:
        arr, zooms = arr[..., None], (*zooms[:2], 1.0)
    if axes is None:
        flat = next((i for i in range(3) if arr.shape[i] == 1), None)
        vol, _, spacing, order = reorient(arr, affine, zooms, flat)
    else:
        order = tuple(int(a) for a in axes)
        vol = np.transpose(arr, order + tuple(range(3, arr.ndim)))
        z3 = [float(z) for z in zooms[:3]]
        spacing = (z3[order[0]], z3[order[1]], z3[order[2]])
    vol = vol[None] if vol.ndim == 3 else np.moveaxis(vol, -1, 0)
    return vol, tuple(int(a) for a in order), spacing


#: ITU-R BT.601 luma weights (R, G, B): the one RGB -> grey rule of ``predict`` and the demo.
RGB_TO_GREY = (0.299, 0.587, 0.114)


def load_image(path: Path, *, mode: str | None = None) -> np.ndarray:
    """Pixel array of a png/jpg/bmp/gif/tif file: ``(H, W)`` or ``(H, W, C)``.

    ``mode`` converts with PIL (``"L"``, ``"RGB"``); ``"P"`` palette images are returned
    as their palette indices (class indices of palette masks).
    """
    require_file(path, "image file")
    suffix = path.suffix.lower()
    try:
        if suffix in (".tif", ".tiff") and mode is None:
            import tifffile

            arr = np.asarray(tifffile.imread(str(path)))
            if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
                arr = np.moveaxis(arr, 0, -1)  # planar (C, H, W) tif
            return arr
        from PIL import Image

        with Image.open(path) as im:
            im.load()
            if mode is not None and im.mode != mode:
                im = im.convert(mode)
            return np.asarray(im)
    except Exception as exc:
        raise DataError(
            f"{path}: unreadable or truncated image ({type(exc).__name__}: {exc}); "
            "re-create or re-download it"
        ) from exc


def picture_shape(path: Path) -> tuple[int, ...]:
    """``(H, W)`` of a png/jpg/bmp/tif from its header only (nothing decoded)."""
    require_file(path, "image file")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(str(path)) as tif:
                shape = tuple(int(n) for n in tif.series[0].shape)
            # (H, W), (H, W, C) or planar (C, H, W): the two largest axes are the plane.
            return tuple(sorted(shape, reverse=True)[:2]) if len(shape) > 2 else shape
        from PIL import Image

        with Image.open(path) as im:
            return (int(im.height), int(im.width))
    except Exception as exc:
        raise DataError(
            f"{path}: unreadable or truncated image ({type(exc).__name__}: {exc}); "
            "re-create or re-download it"
        ) from exc


def load_picture(path: Path) -> np.ndarray:
    """Pixels of a png/jpg/bmp/tif *image* (not a mask): ``(H, W)`` or ``(H, W, C)``.

    Palette images are expanded to their colours and alpha is dropped, as the demo's
    upload reader does; the dtype is kept (uint8 / uint16 / float) so the caller can tell
    a display rendering from raw intensities.
    """
    if path.suffix.lower() in (".tif", ".tiff"):
        arr = load_image(path)
        if arr.ndim == 3 and arr.shape[-1] in (2, 4):
            arr = arr[..., :-1]  # grey + alpha, RGB + alpha
        return arr
    require_file(path, "image file")
    try:
        from PIL import Image

        with Image.open(path) as im:
            im.load()
            if im.mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            if im.mode in ("LA", "RGBA", "PA"):
                im = im.convert(im.mode[:-1] if im.mode != "PA" else "RGB")
            if im.mode == "1":
                im = im.convert("L")
            return np.asarray(im)
    except Exception as exc:
        raise DataError(
            f"{path}: unreadable or truncated image ({type(exc).__name__}: {exc}); "
            "re-create or re-download it"
        ) from exc


def read_json(path: Path) -> dict[str, Any]:
    require_file(path, "JSON file")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc}); fix the file") from exc
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object at the top level")
    return data


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    """Write ``array`` to ``path`` (``.npy``) via a temp file + rename (safe for workers)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npy")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, array)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def cache_root() -> Path:
    """``$UNETZOO_CACHE`` or ``~/.cache/unetzoo``."""
    env = os.environ.get("UNETZOO_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "unetzoo"
