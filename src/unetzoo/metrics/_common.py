"""Shared helpers of the metric functions: input checks, protocols, bounding boxes."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from unetzoo.errors import ConfigError, DataError

PROTOCOLS = ("strict", "transunet")


def check_protocol(protocol: str) -> str:
    """Return ``protocol`` if it is a known empty-mask protocol, else raise ConfigError."""
    if protocol not in PROTOCOLS:
        raise ConfigError(
            f"unknown metric protocol {protocol!r}; use one of: {', '.join(PROTOCOLS)}"
        )
    return protocol


def check_label_array(arr: object, what: str, *, allow_float: bool = True) -> np.ndarray:
    """``arr`` as a numpy array of class indices / mask values, or a one-line DataError.

    Accepted: boolean and integer arrays of at least one dimension and one element; with
    ``allow_float``, floating arrays that hold only finite whole numbers (a 0/1 mask read
    as float). Refused: None, strings, objects, complex numbers, 0-d arrays, NaN or inf,
    and fractional values (probabilities: threshold or take the argmax first).
    """
    if arr is None:
        raise DataError(f"{what} is None; pass a numpy array of class indices or a mask")
    try:
        out = np.asarray(arr)
    except (TypeError, ValueError) as exc:  # ragged nested lists
        raise DataError(f"{what} is not a regular array ({exc}); pass a numpy array") from exc
    kind = out.dtype.kind
    if kind not in "biuf":
        raise DataError(
            f"{what} has dtype {out.dtype}; pass a boolean or integer array "
            "(class indices or a mask)"
        )
    if out.ndim == 0 or out.size == 0:
        raise DataError(
            f"{what} has shape {out.shape}; pass an array of at least one dimension and "
            "one element (a 2-D image or a 3-D volume)"
        )
    if kind == "f":
        if not allow_float:
            raise DataError(
                f"{what} label map has dtype {out.dtype}; pass integer class indices "
                "(e.g. argmax of the logits), not probabilities"
            )
        if not np.all(np.isfinite(out)):
            raise DataError(f"{what} contains NaN or inf; pass a finite mask")
        if not np.array_equal(out, np.round(out)):
            raise DataError(
                f"{what} holds fractional values (probabilities?); threshold it or take "
                "the argmax of the class scores first"
            )
    return out


def as_masks(pred: object, gt: object) -> tuple[np.ndarray, np.ndarray]:
    """Both inputs as boolean arrays (nonzero = foreground) of one shape; bad input is a
    :class:`DataError` (see :func:`check_label_array`)."""
    pred = check_label_array(pred, "prediction")
    gt = check_label_array(gt, "ground truth")
    if pred.shape != gt.shape:
        raise DataError(
            f"prediction shape {pred.shape} differs from ground-truth shape {gt.shape}; "
            "resample the prediction to the label grid first"
        )
    if pred.dtype != np.bool_:
        pred = pred != 0
    if gt.dtype != np.bool_:
        gt = gt != 0
    return pred, gt


#: Voxel sizes distances are computed with: beyond these the squared distances the
#: transforms use underflow (to 0) or overflow.
MIN_SPACING, MAX_SPACING = 1e-9, 1e9


def normalize_spacing(spacing: float | Sequence[float] | None, ndim: int) -> np.ndarray:
    """Voxel spacing as a float64 vector of length ``ndim`` (1.0 per axis when None)."""
    if spacing is None:
        return np.ones(ndim, dtype=np.float64)
    bad = DataError(
        f"spacing {spacing!r} must be one positive number or {ndim} positive numbers "
        "(one per array axis, in the array's axis order)"
    )
    if isinstance(spacing, (str, bytes)):
        raise bad
    try:
        sp = np.atleast_1d(np.asarray(spacing, dtype=np.float64))
    except (TypeError, ValueError) as exc:
        raise bad from exc
    if sp.size == 1:
        sp = np.repeat(sp, ndim)
    if sp.shape != (ndim,) or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise bad
    if np.any(sp < MIN_SPACING) or np.any(sp > MAX_SPACING):
        # Squared distances of 1e-320 (a subnormal) underflow to 0: HD95 0 for any error.
        raise DataError(f"spacing {spacing!r} is outside {MIN_SPACING:g}..{MAX_SPACING:g} per "
                        "axis, where distances stop being exact; give the voxel size in mm")
    return sp


def bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """Tight bounding box of the nonzero voxels as a tuple of slices, or None if empty."""
    # Crop axis by axis so that later profiles scan only the remaining slab.
    box: list[slice] = []
    view = mask
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        profile = np.any(view, axis=others) if others else view
        idx = np.flatnonzero(profile)
        if idx.size == 0:
            return None
        sl = slice(int(idx[0]), int(idx[-1]) + 1)
        box.append(sl)
        view = view[(slice(None),) * axis + (sl,)]
    return tuple(box)


def union_box(
    a: tuple[slice, ...] | None, b: tuple[slice, ...] | None
) -> tuple[slice, ...] | None:
    """Smallest box holding both boxes (either may be None = empty)."""
    if a is None:
        return b
    if b is None:
        return a
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b))


def scored_mean(values: Sequence[float]) -> tuple[float, int]:
    """Mean of the non-NaN values (the scored ones) and how many there are: NaN, 0 when
    none is scored; inf is kept (nnU-Net's ``nanmean``)."""
    kept = [float(v) for v in values if not math.isnan(float(v))]
    return (float(np.mean(kept)) if kept else math.nan), len(kept)
