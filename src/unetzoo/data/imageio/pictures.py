"""2-D pictures of the registry (:mod:`unetzoo.data.imageio`): PNG, JPEG, BMP, GIF
through Pillow, TIFF through tifffile.

A picture is read as it is displayed (its EXIF orientation applied, as every viewer
does), one image per file (a multi-page TIFF is a stack, refused by name).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from unetzoo.data import io
from unetzoo.errors import DataError

#: Pages a TIFF may have (a 20,000-page file ran for minutes): counted before the
#: registry reads its shape, since the page count of a hostile file is not trusted.
MAX_TIFF_PAGES = 1024
_EXIF_ORIENTATION = 0x0112
_TIFF = (".tif", ".tiff")


def _is_tiff(path: Path) -> bool:
    return path.suffix.lower() in _TIFF


def _upright(im: Any) -> Any:
    """The picture as it is displayed: its EXIF orientation (a camera's or phone's
    rotation flag) applied; pixels loaded."""
    from PIL import ImageOps

    im.load()
    if im.getexif().get(_EXIF_ORIENTATION, 1) in (1, None):
        return im
    return ImageOps.exif_transpose(im)


def _open_tiff(tif: Any, path: Path) -> tuple[int, ...]:
    """The shape of an open TIFF's one image: pages counted up to the cap, a stack refused."""
    pages = tif.pages
    pages.useframes = False
    n = 0
    for _ in pages:  # stops at the cap
        n += 1
        if n > MAX_TIFF_PAGES:
            raise DataError(f"{path}: more than {MAX_TIFF_PAGES} pages; give one image "
                            "per file (or a volume as NIfTI)")
    count = len(tif.series[0].pages) if tif.series else 0
    if count > 1:
        raise DataError(f"{path}: a TIFF stack of {count} pages, not one 2-D image; save a "
                        "stack as a NIfTI volume, or each page as its own file")
    return tuple(int(n) for n in tif.series[0].shape)


def _tiff(path: Path) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(str(path)) as tif:
        _open_tiff(tif, path)
        arr = np.asarray(tif.series[0].asarray())
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # planar (C, H, W) tif
    return arr


class PictureIO:
    """PNG / JPEG / BMP / GIF / TIFF pictures; label maps written as PNG or TIFF."""

    endings = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
    what = "image"

    @staticmethod
    def shape(path: Path) -> tuple[int, ...]:
        """``(H, W)`` from the header only (nothing decoded)."""
        io.require_file(path, "image file")
        with io.unreadable_as_data_error(path, "image"):
            if _is_tiff(path):
                import tifffile

                with tifffile.TiffFile(str(path)) as tif:
                    shape = _open_tiff(tif, path)
                # (H, W), (H, W, C) or planar (C, H, W): the two largest axes are the plane.
                return tuple(sorted(shape, reverse=True)[:2]) if len(shape) > 2 else shape
            from PIL import Image

            with Image.open(path) as im:
                swap = im.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8)  # turned 90 deg
                return (int(im.width), int(im.height)) if swap else (int(im.height), int(im.width))

    @staticmethod
    def read(path: Path) -> tuple[np.ndarray, None, None]:
        """Pixels of an *image* (not a mask): ``(H, W)`` or ``(H, W, C)`` in the file's
        dtype (so a display rendering is told from raw intensities); palettes expanded
        to their colours, alpha dropped."""
        io.require_file(path, "image file")
        with io.unreadable_as_data_error(path, "image"):
            if _is_tiff(path):
                arr = _tiff(path)
                return (arr[..., :-1] if arr.ndim == 3 and arr.shape[-1] in (2, 4) else arr), None, None
            from PIL import Image

            with Image.open(path) as im:
                im = _upright(im)
                if im.mode == "P":
                    im = im.convert("RGBA" if "transparency" in im.info else "RGB")
                if im.mode in ("LA", "RGBA", "PA"):
                    im = im.convert(im.mode[:-1] if im.mode != "PA" else "RGB")
                if im.mode == "1":
                    im = im.convert("L")
                return np.asarray(im), None, None

    @staticmethod
    def write(array: np.ndarray, affine: np.ndarray | None, path: Path) -> None:
        """A ``(H, W)`` label map (a picture has no geometry: ``affine`` is ignored)."""
        if array.ndim != 2:
            raise DataError(f"{path}: a picture's label map must be 2-D, got shape {array.shape}")
        if _is_tiff(path):
            import tifffile

            tifffile.imwrite(str(path), array)
            return
        from PIL import Image

        Image.fromarray(array).save(path)


    @staticmethod
    def read_raw(path: Path, mode: str | None = None) -> np.ndarray:
        """Pixels of a dataset's image or mask: ``(H, W)`` or ``(H, W, C)``.

        ``mode`` converts with PIL (``"L"``, ``"RGB"``); ``"P"`` palette images are
        returned as their palette indices (class indices of palette masks), alpha kept.
        """
        io.require_file(path, "image file")
        with io.unreadable_as_data_error(path, "image"):
            if _is_tiff(path) and mode is None:
                return _tiff(path)
            from PIL import Image

            with Image.open(path) as im:
                im = _upright(im)
                if mode is not None and im.mode != mode:
                    im = im.convert(mode)
                return np.asarray(im)
