"""Surface-distance metrics: HD95, Hausdorff distance (HD) and ASSD.

Definitions follow medpy's ``medpy.metric.binary`` (``hd95``, ``hd``, ``assd``) exactly:

* the surface of a mask is ``mask XOR binary_erosion(mask, generate_binary_structure(ndim,
  connectivity))`` with scipy's default ``border_value=0``, so foreground voxels on the
  image border belong to the surface; ``connectivity=1`` (faces only) by default;
* the distance of a surface voxel is the Euclidean distance, in the units of
  ``spacing`` (per array axis; voxels when None), to the nearest surface voxel of the
  other mask;
* HD95 is one ``numpy.percentile(..., 95)`` (linear interpolation) over the pooled
  distances of both directions; HD is the largest distance; ASSD is the mean of the
  pooled distances of both directions (medpy >= 0.5; older medpy averaged the two
  directed means, which differs when the surfaces have different sizes).

Speed: the work is done on the bounding box of the masks only (outside it both masks
are background, so the erosion sees the same neighbourhood as on the full image), and
the nearest-surface distances come either from a KD-tree over the surface voxels (few
surface voxels in a large box, the usual case for organs) or from a Euclidean distance
transform of the box (dense surfaces). Both give medpy's values; ``surface_distances``
computes them once for all three metrics.

Empty masks (``protocol``):

``"strict"`` (default; MONAI's surface distances)
    both masks empty -> NaN (nothing to measure: the case is not scored for this class);
    exactly one empty -> ``inf``, the distance to an empty surface (MONAI's
    ``get_surface_distance``; MONAI 1.6's ``compute_hausdorff_distance`` returns NaN
    there), so a missed or a hallucinated structure can never look close or drop out
    of a mean.
``"transunet"``
    TransUNet's ``calculate_metric_percase``: both non-empty -> the value, otherwise 0.0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import binary_erosion, distance_transform_edt, generate_binary_structure
from scipy.spatial import cKDTree

from unetzoo.errors import ConfigError
from unetzoo.metrics._common import (
    as_masks,
    bounding_box,
    check_protocol,
    normalize_spacing,
    union_box,
)

METHODS = ("auto", "kdtree", "edt")

# "auto" takes the KD-tree when the surface holds fewer than 1/4 of the box's voxels:
# the tree costs ~ n log n over surface voxels, the EDT ~ many passes over the box
# (measured: equal at ~1/8 on small organ boxes, the tree 10x faster on large boxes).
_KDTREE_FRACTION = 4


@dataclass(frozen=True)
class SurfaceDistances:
    """Directed surface distances between a prediction and a ground-truth mask.

    ``pred_to_gt[i]`` is the distance of the i-th prediction surface voxel to the
    ground-truth surface, ``gt_to_pred`` the reverse (both 1-D float64, empty when either
    mask is empty).
    """

    pred_to_gt: np.ndarray
    gt_to_pred: np.ndarray
    pred_empty: bool
    gt_empty: bool

    def _empty_value(self, protocol: str) -> float | None:
        check_protocol(protocol)
        if not self.pred_empty and not self.gt_empty:
            return None
        if protocol == "transunet":
            return 0.0
        return math.nan if (self.pred_empty and self.gt_empty) else math.inf

    def hd95(self, protocol: str = "strict") -> float:
        """95th percentile of the pooled distances of both directions (medpy ``hd95``)."""
        fixed = self._empty_value(protocol)
        if fixed is not None:
            return fixed
        return float(np.percentile(np.concatenate((self.pred_to_gt, self.gt_to_pred)), 95))

    def hd(self, protocol: str = "strict") -> float:
        """Largest distance of both directions (medpy ``hd``)."""
        fixed = self._empty_value(protocol)
        if fixed is not None:
            return fixed
        return float(max(self.pred_to_gt.max(), self.gt_to_pred.max()))

    def assd(self, protocol: str = "strict") -> float:
        """Mean of the pooled distances of both directions (medpy 0.5 ``assd``)."""
        fixed = self._empty_value(protocol)
        if fixed is not None:
            return fixed
        return float(np.concatenate((self.pred_to_gt, self.gt_to_pred)).mean())


def _surface(mask: np.ndarray, footprint: np.ndarray, connectivity: int) -> np.ndarray:
    """``mask XOR binary_erosion(mask, footprint)`` with scipy's ``border_value=0``.

    For face connectivity the erosion is done with shifted array views (a few passes of
    boolean AND), several times faster than scipy's generic erosion.
    """
    if connectivity != 1 or mask.ndim == 0:
        # border_value=0 (scipy's default) as medpy: the image edge counts as background.
        return mask & ~binary_erosion(mask, structure=footprint, iterations=1)
    eroded = mask.copy()
    full = (slice(None),) * mask.ndim
    for axis in range(mask.ndim):
        def at(sl: slice | int, axis: int = axis) -> tuple:
            return full[:axis] + (sl,) + full[axis + 1 :]

        if mask.shape[axis] > 1:
            eroded[at(slice(1, None))] &= mask[at(slice(None, -1))]
            eroded[at(slice(None, -1))] &= mask[at(slice(1, None))]
        # voxels on the image edge have a background neighbour outside it
        eroded[at(0)] = False
        eroded[at(-1)] = False
    return mask & ~eroded


def surface_distances(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: float | Sequence[float] | None = None,
    *,
    connectivity: int = 1,
    method: str = "auto",
) -> SurfaceDistances:
    """Directed surface distances of two masks of one shape (2-D or 3-D, nonzero = fg).

    Args:
        pred, gt: masks of the same shape.
        spacing: voxel size per array axis (e.g. ``(sz, sy, sx)`` in mm for ``(D, H, W)``),
            one number for all axes, or None for voxel units.
        connectivity: neighbourhood of the surface erosion (1 = faces, as medpy's default).
        method: ``"kdtree"``, ``"edt"`` or ``"auto"`` (pick the cheaper); same values.

    Returns:
        A :class:`SurfaceDistances`; call ``.hd95()``, ``.hd()``, ``.assd()`` on it.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown surface-distance method {method!r}; use one of: {METHODS}")
    pred, gt = as_masks(pred, gt)
    sp = normalize_spacing(spacing, pred.ndim)
    empty = np.empty(0, dtype=np.float64)
    box_p = bounding_box(pred)
    box_g = bounding_box(gt)
    if box_p is None or box_g is None:
        return SurfaceDistances(empty, empty, box_p is None, box_g is None)
    box = union_box(box_p, box_g)
    return _distances_in_box(pred[box], gt[box], sp, connectivity, method)


def _tree(points: np.ndarray) -> cKDTree:
    # Surface voxels lie on a lattice: an unbalanced tree with bigger leaves builds ~5x
    # and queries ~2x faster here than the defaults (same exact nearest neighbours).
    return cKDTree(points, leafsize=32, balanced_tree=False, compact_nodes=False)


def _distances_in_box(
    pred: np.ndarray,
    gt: np.ndarray,
    sp: np.ndarray,
    connectivity: int,
    method: str,
) -> SurfaceDistances:
    """Surface distances of two non-empty masks already cropped to their union box."""
    footprint = generate_binary_structure(pred.ndim, connectivity)
    surf_p = _surface(pred, footprint, connectivity)
    surf_g = _surface(gt, footprint, connectivity)
    if method == "auto":
        n_surface = np.count_nonzero(surf_p) + np.count_nonzero(surf_g)
        method = "kdtree" if n_surface * _KDTREE_FRACTION < pred.size else "edt"
    if method == "kdtree":
        pts_p = np.argwhere(surf_p) * sp
        pts_g = np.argwhere(surf_g) * sp
        d_pg = _tree(pts_g).query(pts_p, k=1)[0]
        d_gp = _tree(pts_p).query(pts_g, k=1)[0]
    else:
        d_pg = distance_transform_edt(~surf_g, sampling=sp)[surf_p]
        d_gp = distance_transform_edt(~surf_p, sampling=sp)[surf_g]
    return SurfaceDistances(
        np.asarray(d_pg, dtype=np.float64),
        np.asarray(d_gp, dtype=np.float64),
        False,
        False,
    )


def _distance_metric(name: str, doc: str) -> Callable[..., float]:
    """The public function of one :class:`SurfaceDistances` metric (one signature, one
    body for HD95, HD and ASSD)."""

    def metric(
        pred: np.ndarray,
        gt: np.ndarray,
        spacing: float | Sequence[float] | None = None,
        protocol: str = "strict",
        *,
        connectivity: int = 1,
    ) -> float:
        check_protocol(protocol)
        distances = surface_distances(pred, gt, spacing, connectivity=connectivity)
        return getattr(distances, name)(protocol)

    metric.__name__ = metric.__qualname__ = name
    metric.__doc__ = doc
    return metric


hd95 = _distance_metric(
    "hd95",
    "95th-percentile Hausdorff distance (medpy's ``hd95``; units of ``spacing``).\n\n"
    "Empty masks: strict -> NaN if both are empty, inf if one is (MONAI); transunet -> "
    "0.0 unless both are non-empty.",
)
hd = _distance_metric(
    "hd", "Hausdorff distance (medpy's ``hd``); empty masks as for :func:`hd95`.")
assd = _distance_metric(
    "assd",
    "Average symmetric surface distance (medpy's ``assd``); empty masks as for :func:`hd95`.",
)
