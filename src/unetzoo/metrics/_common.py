"""Shared helpers of the metric functions: input checks, protocols, bounding boxes."""

from __future__ import annotations

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


def as_masks(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both inputs as boolean arrays (nonzero = foreground) of one shape."""
    pred = np.asarray(pred)
    gt = np.asarray(gt)
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


def normalize_spacing(spacing: float | Sequence[float] | None, ndim: int) -> np.ndarray:
    """Voxel spacing as a float64 vector of length ``ndim`` (1.0 per axis when None)."""
    if spacing is None:
        return np.ones(ndim, dtype=np.float64)
    sp = np.atleast_1d(np.asarray(spacing, dtype=np.float64))
    if sp.size == 1:
        sp = np.repeat(sp, ndim)
    if sp.shape != (ndim,) or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise DataError(
            f"spacing {spacing!r} must be one positive number or {ndim} positive numbers "
            "(one per array axis, in the array's axis order)"
        )
    return sp


def diagonal_penalty(shape: Sequence[int], spacing: np.ndarray) -> float:
    """The strict protocol's distance for a mask that is missing on one side.

    The diagonal of the whole image's physical extent, ``sqrt(sum((n_i * s_i) ** 2))``:
    larger than any distance two voxels of the image can have, finite, and in mm.
    """
    extent = np.asarray(shape, dtype=np.float64) * spacing
    return float(np.sqrt(np.sum(extent**2)))


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
