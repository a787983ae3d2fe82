"""Prediction inputs: one reader for ``predict``, ``test``'s inputs and the demo, checked
before anything is decoded, and one rule for writing outputs.

Two steps, the same for every caller: :func:`decode` reads a file (or the channel files of
one case) into a checked :class:`Decoded` ``(C, D, H, W)`` array in the file's dtype
(volumes through the one slicing rule, :func:`unetzoo.data.geometry.volume_to_cdhw`);
:func:`model_input` matches the model's channels (:func:`match_channels`) and normalises
with the inference spec's preprocessing (:func:`unetzoo.data.preprocessing.normalize`;
8-bit and 16-bit pictures by their bit depth,
:func:`unetzoo.data.preprocessing.normalize_picture`). The demo's uploads are written to a
private file and read by the same two steps. What is refused, in one line each, instead
of a silent wrong map: NaN/Inf intensities (a single NaN voxel used to wipe its slice;
masking would invent tissue, so the user decides), non-numeric or complex voxels, inputs
with an empty axis, and 2-D inputs (or volume slices) over ``max_pixels`` (default
4096 x 4096), read from the file header before anything is decoded.
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
    from unetzoo.data.io import check_voxels, nifti_shape, picture_shape

    if _kind(p) == "nifti":
        shape = nifti_shape(p)
        check_voxels(shape, p)
        if len(shape) == 5 and shape[3] == 1:  # NIfTI's vector-valued layout (X, Y, Z, 1, C)
            shape = (*shape[:3], shape[4])
        if len(shape) < 2 or len(shape) > 4:
            raise DataError(f"{p}: expected a 3-D (or 3-D + channels) volume, got shape {shape}")
        check_size(shape, p, max_pixels, volume=len(shape) > 2)
    else:
        check_size(picture_shape(p), p, max_pixels, volume=False)


@dataclass
class Decoded:
    """A file read and checked, before anything model-specific (:func:`decode`).

    Attributes:
        array: ``(C, D, H, W)`` in the file's dtype (``D = 1`` for a 2-D picture), so a
            picture's bit depth is still known.
        spacing: voxel size along ``(D, H, W)`` in mm (1.0 where the format has none).
        affine: a volume's file affine (4x4, file ``(i, j, k)`` indices); None for pictures.
        order: a volume's file axis of each of ``D, H, W``; None for pictures.
        file_ndim: spatial axes in the file (2 for a picture or a single-slice file).
        where: how errors name the input (a path, ``case NAME`` or an upload's name).
    """

    array: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    affine: np.ndarray | None = None
    order: tuple[int, int, int] | None = None
    file_ndim: int = 2
    where: str = "input"
    #: False when the header gives no voxel size (nor, then, an orientation)
    geometry_known: bool = True

    @property
    def picture(self) -> bool:
        return self.order is None

    @property
    def bit_depth(self) -> int | None:
        """255 / 65535 (1 for bool) for 8/16-bit pictures (display renderings), else None."""
        from unetzoo.data.preprocessing import display_bit_depth

        return display_bit_depth(self.array) if self.picture else None


def _decode_picture(p: Path, max_pixels: int, where: str) -> Decoded:
    from unetzoo.data.io import load_picture

    check_header(p, max_pixels)
    raw = load_picture(p)
    check_finite(raw, where)
    if raw.ndim == 2:
        raw = raw[..., None]
    if raw.ndim != 3:
        raise DataError(f"{where}: expected a 2-D image, got array shape {raw.shape}")
    return Decoded(np.moveaxis(raw, -1, 0)[:, None], where=where)


def _decode_volume(
    files: Sequence[Path], max_pixels: int, axes: tuple[int, int, int] | None, where: str
) -> Decoded:
    from unetzoo.data.geometry import volume_to_cdhw

    arr, affine, zooms = medio.load_case_channels(files)
    if arr.ndim == 5 and arr.shape[3] == 1:  # (X, Y, Z, 1, C): NIfTI's vector-valued layout
        arr = arr[:, :, :, 0]
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_) or np.iscomplexobj(arr):
        raise DataError(f"{where}: voxels of type {arr.dtype} are not intensities; save real numbers")
    multi = len(files) > 1 or arr.ndim == 4
    spatial = arr.shape[:-1] if multi else arr.shape
    if len(spatial) not in (2, 3):
        raise DataError(
            f"{where}: expected a 2-D or 3-D image per channel file, got shape {arr.shape}"
        )
    if any(n == 0 for n in spatial):
        raise DataError(f"{where}: the image has an empty axis (shape {arr.shape})")
    h, w = sorted(spatial, reverse=True)[:2]
    if h * w > max_pixels:
        raise DataError(
            f"{where}: slices of {w} x {h} pixels are over predict's limit of "
            f"{max_pixels:,} pixels; crop or downsample it, or raise --max-pixels"
        )
    if len(spatial) == 2:
        arr = arr[:, :, None] if not multi else arr[:, :, None, :]
        zooms = (*zooms[:2], 1.0)
    check_finite(arr, where)
    vol, order, spacing = volume_to_cdhw(arr, affine, zooms, axes)  # the one slicing rule
    # unknown sizes (a NIfTI with pixdim 0, no qform/sform) keep Decoded's 1.0 placeholder
    known = all(s > 0 for s in spacing)
    spacing = tuple(s if s > 0 else 1.0 for s in spacing)
    return Decoded(vol, spacing, affine, order, len(spatial), where, known)


def decode(
    files: str | Path | Sequence[str | Path],
    max_pixels: int = DEFAULT_MAX_PIXELS,
    axes: tuple[int, int, int] | None = None,
    where: str | None = None,
) -> Decoded:
    """Read one input: a 2-D picture, or a volume (NIfTI, NRRD, MetaImage, DICOM) given
    as one file or as the channel files of one case.

    Args:
        files: the file, or the channel files of one case in channel order.
        max_pixels: largest picture (or volume slice) in pixels.
        axes: slice a volume along these file axes (a mask read in its image's order);
            default the one slicing rule.
        where: how errors name the input (default the file, or the files' names).

    Raises:
        DataError: unreadable, empty, too large, NaN/Inf or non-numeric voxels.
    """
    paths = [Path(files)] if isinstance(files, (str, Path)) else [Path(f) for f in files]
    if where is None:
        where = str(paths[0]) if len(paths) == 1 else ", ".join(p.name for p in paths)
    if medio.file_ending(paths[0]) in medio.PICTURE_ENDINGS:
        return _decode_picture(paths[0], max_pixels, where)
    return _decode_volume(paths, max_pixels, axes, where)


def match_channels(image: Decoded, in_channels: int, case: str | None = None) -> np.ndarray:
    """``image.array`` with ``in_channels`` channels (dtype kept).

    Pictures: alpha is dropped, colour goes to grey (ITU-R 601 luma, rounded back to the
    integer type so the bit-depth rule still applies) for one-channel models, grey is
    repeated for three-channel models. Volumes must have the model's channels.
    """
    arr, where = image.array, image.where
    c = arr.shape[0]
    if not image.picture:
        if c != in_channels:
            fix = (f"give them as {case}_0000 ... {case}_{in_channels - 1:04d}" if case else
                   f"give a volume with {in_channels} channel(s) (a last axis in the file)")
            raise DataError(
                f"{where}: the volume has {c} channel(s) but the model takes {in_channels}; "
                f"{fix}, or use a model trained on {c} channel(s)"
            )
        return arr
    if c > 4 and c != in_channels:  # e.g. a multi-page TIFF read as (pages, H, W)
        raise DataError(
            f"{where}: array of shape {arr.shape[2:] + arr.shape[:1]} is not one 2-D image; "
            "predict takes one image per file (save a stack as a NIfTI volume)"
        )
    if c == 4 and in_channels in (1, 3):  # drop alpha
        arr, c = arr[:3], 3
    if c == in_channels:
        return arr
    if in_channels == 1 and c == 3:
        luma = np.tensordot(np.array(RGB_TO_GREY, dtype=np.float32), arr.astype(np.float32), 1)
        return (luma.round().astype(arr.dtype) if arr.dtype.kind == "u" else luma)[None]
    if in_channels == 3 and c == 1:
        return np.repeat(arr, 3, axis=0)
    raise DataError(
        f"{where}: image has {c} channel(s) but the model takes {in_channels}; convert it"
    )


def model_input(
    image: Decoded, in_channels: int, spec: dict[str, Any], case: str | None = None
) -> np.ndarray:
    """Normalised ``(C, D, H, W)`` float32 model input of a :class:`Decoded` input.

    Volumes, float and signed pictures (raw intensities) get ``spec``; 8/16-bit pictures
    the bit-depth rule (:func:`unetzoo.data.preprocessing.normalize_picture`).
    """
    from unetzoo.data.preprocessing import normalize, normalize_picture

    arr = match_channels(image, in_channels, case)
    if image.picture:
        return normalize_picture(arr[:, 0], spec, image.bit_depth)[:, None]
    return normalize(arr.astype(np.float32), spec)


def intensity_warning(
    array: np.ndarray, picture: bool, spec: Any, where: str, strict: bool = False
) -> str | None:
    """One warning line when an input is far outside the training data's intensities
    (``spec.intensity``, :func:`unetzoo.data.preprocessing.intensity_mismatch`: CT into
    an MRI model, MRI into a CT model, 12-bit data read as 16 bits), else None; with
    ``strict`` (``--strict-inputs``) a :class:`DataError` instead. ``array`` is a volume's
    raw ``(C, ...)`` intensities, or a picture's model input (picture datasets store the
    fingerprint of their normalised pixels, ``"space": "normalised"``); a picture into a
    volume model, or a spec without a fingerprint (older checkpoints), checks nothing."""
    from unetzoo.data.preprocessing import intensity_mismatch, scale_free

    fingerprint = getattr(spec, "intensity", None)
    if not fingerprint or (fingerprint.get("space") == "normalised") != picture:
        return None
    why = intensity_mismatch(np.asarray(array, dtype=np.float32), fingerprint,
                             scale_free(dict(spec.preprocessing)) and not picture)
    if why is None:
        return None
    modality = fingerprint.get("modality")
    text = (f"{where}: far outside the intensities the model was trained on"
            f"{f' ({modality})' if modality else ''}: {why}; its labels are likely wrong")
    if strict:
        raise DataError(f"{text} (refused under --strict-inputs)")
    return f"warning: {text} (--strict-inputs refuses such inputs)"


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
    """Read a NIfTI volume or a 2-D picture and normalise it for a model
    (:func:`decode` then :func:`model_input`); size and emptiness are checked from the
    header before decoding, finiteness after."""
    p = Path(path)
    check_header(p, max_pixels)
    dec = decode(p, max_pixels)
    image = model_input(dec, in_channels, spec)
    return Input("image" if dec.picture else "nifti", image, dec.affine, dec.order)


def read_volume_case(
    case: str, files: Sequence[Path], in_channels: int, spec: dict[str, Any], max_pixels: int
) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int], int]:
    """Read and normalise one volume case (:func:`decode` then :func:`model_input`).

    Returns ``(image (C, D, H, W) float32, affine, order, file_ndim)``: ``order`` is the
    file axis of each of ``D, H, W`` (:func:`unetzoo.data.geometry.reorient`), ``file_ndim``
    the number of spatial axes in the file (2 for a single-slice 2-D file).
    """
    # Errors name the file when the case is one file, else the case.
    where = str(files[0]) if len(files) == 1 else f"case {case}"
    dec = decode(files, max_pixels, where=where)
    assert dec.affine is not None and dec.order is not None
    return model_input(dec, in_channels, spec, case), dec.affine, dec.order, dec.file_ndim


def write_output(target: Path, write: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """``write(*args, **kwargs)`` into a temporary file beside ``target`` (the argument
    naming ``target`` is swapped for it), then renamed onto ``target``
    (:func:`unetzoo.data.io.atomic_path`): an existing file is replaced, never rewritten in
    place, and a kill leaves no truncated file under its name. A full disk or an
    unwritable folder is one line naming ``target``."""
    from unetzoo.data.io import atomic_path

    try:
        with atomic_path(target) as tmp:
            def swap(a: Any) -> Any:
                if isinstance(a, (str, Path)) and Path(a) == Path(target):
                    return str(tmp) if isinstance(a, str) else tmp
                return a

            write(*map(swap, args), **{k: swap(v) for k, v in kwargs.items()})
    except OSError as exc:
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
