"""Voxel order and grids: the one home of the slicing rule and of affine permutations.

A medical file holds a volume in file index order ``(i, j, k)`` with a 4x4 ``affine``
from those indices to world mm (:func:`unetzoo.data.imageio.read_file`). The
pipeline works on ``(D, H, W)`` arrays whose ``D`` is the slicing axis; ``axes`` (or
``order``) names the file axis each of ``D, H, W`` came from. This module turns one into
the other, both ways, and checks that two files lie on one grid. Pure numpy: no file is
read or written here (the label writer, :func:`unetzoo.data.imageio.save_case_labels`, puts
predictions back through :func:`array_to_file`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unetzoo.errors import DataError

#: Largest difference between two affines (mm, or direction cosine x spacing) that still
#: counts as the same grid; nnU-Net's dataset check compares geometry with a similar 1e-3.
AFFINE_TOLERANCE = 1e-3


def check_same_geometry(
    ref: np.ndarray,
    other: np.ndarray,
    path: str | Path,
    ref_path: str | Path,
    fix: str = "resample it onto the image (or fix its header)",
) -> None:
    """Raise :class:`DataError` unless ``other`` (a label's or extra channel's affine)
    puts its voxels where ``ref`` (the first image channel's) does.

    A label map on another grid (flipped, shifted, other spacing) is not the label of
    this image, and training on it teaches nonsense without any error.
    """
    diff = float(np.max(np.abs(np.asarray(ref) - np.asarray(other))))
    if not diff <= AFFINE_TOLERANCE:
        raise DataError(
            f"{path}: its affine differs from {Path(ref_path).name}'s by up to {diff:.4g} "
            f"(tolerance {AFFINE_TOLERANCE:g}): it does not lie on the image's voxel grid; "
            f"{fix}"
        )


def file_to_array_affine(
    affine: np.ndarray | None, order: Sequence[int] | None = (2, 1, 0)
) -> np.ndarray | None:
    """The affine of ``(D, H, W)`` arrays whose axes are the file axes ``order`` (as
    :func:`reorient` returns it) from the file's ``(i, j, k)`` affine; the default
    ``(k, j, i)`` is the plain reversal of the file axes. None when either is unknown."""
    if affine is None or order is None:
        return None
    aff = np.asarray(affine, dtype=np.float64)
    return aff[:, [*(int(a) for a in order), 3]]


def reorient(
    array: np.ndarray, affine: np.ndarray, zooms: Sequence[float], slice_axis: int | None
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float], tuple[int, int, int]]:
    """Put the slicing axis first: returns ``(array, affine, spacing, order)``.

    ``array`` is ``(i, j, k)`` or ``(i, j, k, ...)``; trailing axes are kept after the three
    spatial ones. ``order`` is the permutation of the file axes; the slicing axis is
    ``slice_axis``, or the largest spacing (ties go to the later axis: k when isotropic).
    The two in-plane axes keep file order reversed (``(k, j, i)`` like SimpleITK's
    ``(z, y, x)`` for the usual k-slicing).
    """
    z3 = [float(z) for z in zooms[:3]]
    if slice_axis is None:  # unknown (NaN) sizes rank lowest: the tie rule decides
        a = max(range(3), key=lambda i: (round(z3[i], 6) if z3[i] > 0 else 0.0, i))
    else:
        a = int(slice_axis)
    rest = [i for i in range(3) if i != a]
    order = (a, rest[1], rest[0])
    out = np.transpose(array, order + tuple(range(3, array.ndim)))
    spacing = (z3[order[0]], z3[order[1]], z3[order[2]])
    return out, file_to_array_affine(affine, order), spacing, order


def volume_to_cdhw(
    array: np.ndarray,
    affine: np.ndarray,
    zooms: Sequence[float],
    axes: tuple[int, int, int] | None = None,
) -> tuple[np.ndarray, tuple[int, int, int], tuple[float, float, float]]:
    """The one slicing rule of ``predict``, ``test`` and the demo: a file-order volume
    ``(i, j, k)`` or ``(i, j, k, C)`` -> ``(C, D, H, W)`` with ``D`` the slicing axis.

    The slicing axis is a single-slice axis when there is one, else the through-plane
    axis (largest spacing; :func:`reorient`); ``axes`` forces an order (a mask read in
    the order of its image). Returns ``(volume, axes, spacing)``: the file axis of each of
    ``D, H, W`` (for :func:`unetzoo.data.imageio.save_case_labels`) and the voxel size along
    them in mm.
    """
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


def array_to_file(
    array: np.ndarray, affine: np.ndarray | None, axes: Sequence[int]
) -> tuple[np.ndarray, np.ndarray | None]:
    """Undo :func:`volume_to_cdhw` / :func:`reorient` for a ``(D, H, W[, ...])`` array:
    the array in file order ``(i, j, k[, ...])`` and the file's ``(i, j, k)`` affine from
    the ``(d, h, w)`` one (None stays None)."""
    inv = tuple(int(a) for a in np.argsort(axes))
    arr = np.transpose(np.asarray(array), inv + tuple(range(3, np.ndim(array))))
    return arr, file_to_array_affine(affine, inv)


# -- orientation ----------------------------------------------------------------------------
#: The two codes of each RAS+ world axis: ``(d, h, w)`` arrays are described by the world
#: direction each index axis increases toward (nibabel's axcodes), e.g. ``"SAR"`` for axial
#: slices of an ``(S, A, R)`` array.
WORLD_AXES = ("RL", "AP", "SI")


def orientation_codes(affine: np.ndarray | None) -> str | None:
    """The axcodes (``"SAR"``, ...) of the three index axes of ``affine`` (RAS+ world mm),
    oblique axes assigned to their nearest world axis (nibabel's ``io_orientation``); None
    when the affine is unknown or degenerate (no orientation to match)."""
    if affine is None:
        return None
    from nibabel.orientations import io_orientation, ornt2axcodes

    aff = np.asarray(affine, dtype=np.float64)
    lin = aff[:3, :3]
    if not np.all(np.isfinite(lin)) or np.any(np.linalg.norm(lin, axis=0) <= 0):
        return None
    ornt = io_orientation(aff)
    if np.isnan(ornt).any():
        return None
    return "".join(ornt2axcodes(ornt))


def check_orientation_codes(codes: object) -> str | None:
    """``codes`` if it names each world axis once (``"SAR"``), else None."""
    if not isinstance(codes, str) or len(codes) != 3:
        return None
    owners = [next((i for i, pair in enumerate(WORLD_AXES) if c in pair), None) for c in codes]
    return codes if sorted(o for o in owners if o is not None) == [0, 1, 2] else None


@dataclass(frozen=True)
class Reorientation:
    """How a ``(D, H, W)`` array is turned into the training orientation and back:
    ``perm`` (array axis taken for each of D, H, W) then ``flips`` (per new axis)."""

    perm: tuple[int, int, int]
    flips: tuple[bool, bool, bool]

    @property
    def identity(self) -> bool:
        return self.perm == (0, 1, 2) and not any(self.flips)

    def forward(self, array: np.ndarray, lead: int = 1) -> np.ndarray:
        """``array`` (``lead`` leading axes, e.g. channels, then D, H, W) in the target
        orientation."""
        out = np.transpose(array, (*range(lead), *(lead + p for p in self.perm)))
        axes = tuple(lead + i for i, f in enumerate(self.flips) if f)
        return np.ascontiguousarray(np.flip(out, axes) if axes else out)

    def back(self, array: np.ndarray, lead: int = 0) -> np.ndarray:
        """Undo :meth:`forward` exactly (labels: ``lead=0``; probabilities: ``lead=1``)."""
        axes = tuple(lead + i for i, f in enumerate(self.flips) if f)
        out = np.flip(array, axes) if axes else array
        inv = tuple(int(a) for a in np.argsort(self.perm))
        return np.ascontiguousarray(np.transpose(out, (*range(lead), *(lead + i for i in inv))))


def reorientation(affine: np.ndarray | None, target: str | None) -> Reorientation | None:
    """The :class:`Reorientation` that puts a ``(D, H, W)`` array whose index-to-world
    map is ``affine`` into the orientation ``target`` (axcodes of the training arrays,
    e.g. ``"SAR"``: axial slices, rows toward A, columns toward R); None when either is
    unknown (no reorientation: the file's own slicing rule)."""
    codes, target = orientation_codes(affine), check_orientation_codes(target)
    if codes is None or target is None:
        return None
    perm, flips = [], []
    for t in target:
        pair = next(p for p in WORLD_AXES if t in p)
        a = next(i for i, c in enumerate(codes) if c in pair)
        perm.append(a)
        flips.append(codes[a] != t)
    return Reorientation(tuple(perm), tuple(flips))  # type: ignore[arg-type]
