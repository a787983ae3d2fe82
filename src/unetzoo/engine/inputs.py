"""Prediction inputs: one reader per kind (volumes by case, 2-D pictures), checked before
anything is decoded, and one rule for writing outputs.

Inputs are normalised with the inference spec's preprocessing
(:func:`unetzoo.data.preprocessing.normalize`); volumes are put in ``(C, D, H, W)`` by the
one slicing rule (:func:`unetzoo.data.geometry.volume_to_cdhw`, the demo's too). What is
refused, in one line each, instead of a silent wrong map: NaN/Inf intensities (a single NaN
voxel used to wipe its slice; masking would invent tissue, so the user decides),
non-numeric or complex voxels, inputs with an empty axis, and 2-D inputs (or volume
slices) over ``max_pixels`` (default 4096 x 4096), read from the file header before
anything is decoded. 8-bit and 16-bit pictures get the demo's rule
(:func:`unetzoo.data.preprocessing.normalize_picture`).
"""

from __future__ import annotations

import errno
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unetzoo.data import medio
from unetzoo.data.io import RGB_TO_GREY
from unetzoo.errors import DataError

#: Largest 2-D image (or volume slice) ``predict`` takes, in pixels: 4096 x 4096. An
#: 8000 x 8000 PNG ran 8.5 minutes to a 12 GB peak on CPU (issue 13).
DEFAULT_MAX_PIXELS = 4096 * 4096

NIFTI_SUFFIXES = (".nii", ".nii.gz")
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")


def _kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(IMAGE_SUFFIXES):
        return "image"
    raise DataError(
        f"{path}: unsupported input type; give NIfTI (.nii, .nii.gz) or 2-D images "
        f"({', '.join(IMAGE_SUFFIXES)})"
    )


def _stem(path: Path) -> str:
    name = path.name
    for suf in (".nii.gz", *NIFTI_SUFFIXES, *IMAGE_SUFFIXES):
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return path.stem


def _to_channels(arr: np.ndarray, in_channels: int, where: Path) -> np.ndarray:
    """``(H, W)`` / ``(H, W, C)`` pixels -> ``(in_channels, H, W)`` (dtype kept)."""
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise DataError(f"{where}: expected a 2-D image, got array shape {arr.shape}")
    c = arr.shape[-1]
    if c > 4 and c != in_channels:  # e.g. a multi-page TIFF read as (pages, H, W)
        raise DataError(
            f"{where}: array of shape {arr.shape} is not one 2-D image; predict takes one "
            "image per file (save a stack as a NIfTI volume)"
        )
    if c == 4 and in_channels in (1, 3):  # drop alpha
        arr, c = arr[..., :3], 3
    if c == in_channels:
        out = arr
    elif in_channels == 1 and c == 3:
        luma = arr.astype(np.float32) @ np.array(RGB_TO_GREY, dtype=np.float32)
        # Keep the integer type so the bit depth rule still applies to the grey image.
        out = (luma.round().astype(arr.dtype) if arr.dtype.kind == "u" else luma)[..., None]
    elif in_channels == 3 and c == 1:
        out = np.repeat(arr, 3, axis=-1)
    else:
        raise DataError(
            f"{where}: image has {c} channel(s) but the model takes {in_channels}; convert it"
        )
    return np.moveaxis(out, -1, 0)


def check_finite(arr: np.ndarray, where: Path | str) -> None:
    bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
    if bad:
        raise DataError(
            f"{where}: {bad} voxel(s) hold NaN or Inf; fix or mask them (e.g. set them to "
            "the background intensity) before predicting"
        )


def check_size(shape: tuple[int, ...], where: Path, max_pixels: int, volume: bool) -> None:
    dims = [int(n) for n in shape[:3]]
    if any(n == 0 for n in dims):
        raise DataError(f"{where}: the {'volume' if volume else 'image'} has an empty axis "
                        f"(shape {tuple(shape)}); nothing to segment")
    # The plane of a volume is unknown before reorientation: the two largest axes.
    h, w = sorted(dims, reverse=True)[:2] if volume else dims[:2]
    if h * w > max_pixels:
        side = int(math.isqrt(max_pixels))
        raise DataError(
            f"{where}: {'a slice of ' if volume else ''}{w} x {h} pixels is over predict's limit "
            f"of {max_pixels:,} pixels (about {side} x {side}); crop or downsample it, or "
            "raise --max-pixels if the machine has the memory and time"
        )


def check_header(p: Path, max_pixels: int) -> None:
    """Shape checks from the file header alone: nothing is decoded."""
    from unetzoo.data.io import nifti_shape, picture_shape

    if _kind(p) == "nifti":
        shape = nifti_shape(p)
        if len(shape) < 2 or len(shape) > 4:
            raise DataError(f"{p}: expected a 3-D (or 3-D + channels) volume, got shape {shape}")
        check_size(shape, p, max_pixels, volume=len(shape) > 2)
    else:
        check_size(picture_shape(p), p, max_pixels, volume=False)


@dataclass
class Input:
    """A prediction input, read and normalised.

    Attributes:
        kind: ``"nifti"`` or ``"image"``.
        image: normalised ``(C, D, H, W)`` float32 (``D = 1`` for 2-D images).
        affine: the NIfTI affine (None for pictures).
        order: the file axis of each of ``D, H, W`` (NIfTI only).
    """

    kind: str
    image: np.ndarray
    affine: np.ndarray | None = None
    order: tuple[int, int, int] | None = None


def read_input(
    path: str | Path, in_channels: int, spec: dict[str, Any],
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Input:
    """Read a NIfTI volume or a 2-D picture and normalise it for a model.

    NIfTI intensities get ``spec``; 8/16-bit pictures the demo's bit-depth rule; float
    or signed pictures (raw intensities) get ``spec``. Size and emptiness are checked
    from the header before decoding, finiteness after.
    """
    from unetzoo.data.io import load_picture
    from unetzoo.data.preprocessing import display_bit_depth, normalize_picture

    p = Path(path)
    check_header(p, max_pixels)
    if _kind(p) == "nifti":  # the volume reader of predict_cases, one file as one case
        image, affine, order, _ = read_volume_case(p.name, [p], in_channels, spec, max_pixels)
        return Input("nifti", image, affine, order)
    raw = load_picture(p)
    check_finite(raw, p)
    chans = _to_channels(raw, in_channels, p)
    image = normalize_picture(chans, spec, display_bit_depth(raw))
    return Input("image", image[:, None])


def write_output(target: Path, write: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """``write(*args, **kwargs)``; a full disk or an unwritable folder is one line naming
    ``target``, and no half-written file is left behind."""
    try:
        write(*args, **kwargs)
    except OSError as exc:
        target.unlink(missing_ok=True)
        if exc.errno == errno.ENOSPC:
            raise DataError(f"disk full at {target}; free space or choose another --output") from None
        raise DataError(f"cannot write {target}: {exc.strerror or exc}") from None


def progress_printer(name: str) -> Callable[[int, int], None]:
    """Sliding-window progress on stderr: a line rewritten in place on a terminal, at
    most one line per 10 % in a log file."""
    tty = sys.stderr.isatty()
    shown = {"step": -1}

    def report(done: int, total: int) -> None:
        if total <= 1:
            return
        step = done * 10 // total
        if not tty and step == shown["step"]:
            return
        shown["step"] = step
        text = f"{name}: {done}/{total} windows ({100 * done // total} %)"
        if tty:
            print("\r" + text, end="\n" if done == total else "", file=sys.stderr, flush=True)
        else:
            print(text, file=sys.stderr, flush=True)

    return report


def read_volume_case(
    case: str, files: Sequence[Path], in_channels: int, spec: dict[str, Any], max_pixels: int
) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int], int]:
    """Read and normalise one volume case.

    Returns ``(image (C, D, H, W) float32, affine, order, file_ndim)``: ``order`` is the
    file axis of each of ``D, H, W`` (:func:`unetzoo.data.geometry.reorient`), ``file_ndim``
    the number of spatial axes in the file (2 for a single-slice 2-D file).
    """
    from unetzoo.data.geometry import volume_to_cdhw
    from unetzoo.data.preprocessing import normalize

    # Errors name the file when the case is one file, else the case.
    where = str(files[0]) if len(files) == 1 else f"case {case}"
    arr, affine, zooms = medio.load_case_channels(files)
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_) or np.iscomplexobj(arr):
        raise DataError(f"{where}: voxels of type {arr.dtype} are not intensities; save real numbers")
    multi = len(files) > 1 or arr.ndim == 4
    spatial = arr.shape[:-1] if multi else arr.shape
    if len(spatial) not in (2, 3):
        raise DataError(
            f"{where}: expected a 2-D or 3-D image per channel file, got shape {arr.shape}"
        )
    file_ndim = len(spatial)
    if any(n == 0 for n in spatial):
        raise DataError(f"{where}: the image has an empty axis (shape {arr.shape})")
    h, w = sorted(spatial, reverse=True)[:2]
    if h * w > max_pixels:
        raise DataError(
            f"{where}: slices of {w} x {h} pixels are over predict's limit of "
            f"{max_pixels:,} pixels; crop or downsample it, or raise --max-pixels"
        )
    if file_ndim == 2:
        arr = arr[:, :, None] if not multi else arr[:, :, None, :]
        zooms = (*zooms[:2], 1.0)
    check_finite(arr, where)
    vol, order, _ = volume_to_cdhw(arr, affine, zooms)  # predict's and the demo's rule
    if vol.shape[0] != in_channels:
        names = ", ".join(f.name for f in files)
        raise DataError(
            f"case {case} has {vol.shape[0]} channel(s) ({names}) but the model takes "
            f"{in_channels}; give them as {case}_0000 ... {case}_{in_channels - 1:04d}"
        )
    return normalize(vol.astype(np.float32), spec), affine, tuple(order), file_ndim


